"""Building blocks shared by the model families."""
from vitkit.layers.attention import Attention
from vitkit.layers.block import Block, DropPath, LayerScale
from vitkit.layers.helpers import to_2tuple
from vitkit.layers.mlp import Mlp
from vitkit.layers.patch_embed import ConvStemEmbed, HybridEmbed, PatchEmbed, stem_strides
from vitkit.layers.pos_embed import resample_pos_embed
from vitkit.layers.resnet import ResNetTrunk
from vitkit.layers.vt import (
    FilterTokenizer,
    PoolingTokenizer,
    Projector,
    RecurrentTokenizer,
    TokenPositionEncoding,
    TokenTransformer,
    VTConfig,
    VTModule,
    VTStack,
)

__all__ = ["Attention", "Block", "DropPath", "LayerScale", "Mlp", "PatchEmbed", "HybridEmbed", "ConvStemEmbed",
           "stem_strides", "ResNetTrunk", "resample_pos_embed", "to_2tuple",
           "FilterTokenizer", "PoolingTokenizer", "Projector", "RecurrentTokenizer", "TokenPositionEncoding",
           "TokenTransformer", "VTConfig", "VTModule", "VTStack"]
