"""The timm model equivalent to a vitkit ViT (same config), for ``vitkit bench --compare timm``."""
from __future__ import annotations

from torch import nn

from vitkit.errors import VitkitError


def timm_equivalent(model: nn.Module) -> nn.Module:
    """A ``timm.models.vision_transformer.VisionTransformer`` built with the same arguments."""
    c = getattr(model, "config", None)
    if getattr(model, "family", "") != "vit" or c.hybrid_backbone or c.distilled:
        raise VitkitError(f"--compare timm supports plain ViT presets only, not {type(model).__name__}"
                          f"{' (hybrid/distilled)' if getattr(model, 'family', '') == 'vit' else ''}")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise VitkitError("--compare timm needs timm: pip install timm") from None
    return VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
        global_pool=c.global_pool, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
        mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, init_values=c.init_values,
        class_token=c.class_token, fc_norm=c.fc_norm, drop_rate=c.drop_rate,
        attn_drop_rate=c.attn_drop_rate, drop_path_rate=c.drop_path_rate,
    )
