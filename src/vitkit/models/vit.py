"""Vision Transformer (Dosovitskiy et al., ICLR 2021) with DeiT distillation and hybrid stems.

    z0  = [x_cls; (x_dist;) x_p^1 E; ...; x_p^N E] + E_pos          (eq. 1)
    z'l = MSA(LN(z_{l-1})) + z_{l-1};  z_l = MLP(LN(z'l)) + z'l     (eqs. 2-3)
    y   = head(LN(z_L^0))  or  head(fc_norm(mean_i z_L^i))           (eq. 4)

A distilled (DeiT) model's pooled features are (LN(z_L^cls) + LN(z_L^dist)) / 2, with or
without heads, as timm's ``forward_head(pre_logits=True)``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.fx
from torch import nn

from vitkit.config import image_size
from vitkit.errors import VitkitError
from vitkit.layers import Block, ConvStemEmbed, HybridEmbed, PatchEmbed, resample_pos_embed, stem_strides
from vitkit.layers.helpers import drop_path_ramp, maybe_checkpoint
from vitkit.models.base import FeatureInfo, FeatureInfoList, Indices, VitkitModel
from vitkit.models.catalog import register_family, register_presets

torch.fx.wrap("resample_pos_embed")  # traced as one call: the patch grid is known only when it runs


@dataclass(frozen=True)
class ViTConfig:
    img_size: int | tuple[int, int] = 224  # stored as (H, W)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None  # layer-scale init; None = off
    class_token: bool = True
    global_pool: Literal["token", "avg", ""] = "token"  # "": no pooling, the head reads every token
    fc_norm: bool | None = None  # None: LayerNorm after pooling iff global_pool == "avg"
    distilled: bool = False  # DeiT distillation token + second head
    drop_rate: float = 0.0  # dropout on the pooled features and after the pos-embedding
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    hybrid_backbone: str | None = None  # e.g. "resnet50": its feature map is the patch source
    hybrid_stages: int = 3
    conv_stem: tuple[int, ...] = ()  # ViT_C stem: channels of its 3x3 convs
    conv_stem_strides: tuple[int, ...] = ()  # stride (1 or 2) of each conv_stem conv; () = all 2
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", image_size(self.img_size))

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise VitkitError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_pool not in ("token", "avg", ""):
            raise VitkitError(f"global_pool must be 'token', 'avg' or '' (no pooling), got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise VitkitError("global_pool='token' needs class_token=True; use global_pool='avg' without it")
        if self.distilled and not self.class_token:
            raise VitkitError("a distilled ViT needs class_token=True")
        if self.distilled and (self.global_pool != "token" or self.fc_norm):
            raise VitkitError("a distilled ViT's heads read the class and distillation tokens after the final "
                              "norm: use global_pool='token' and fc_norm=None (mean pooling / fc_norm would leave "
                              "the distillation token un-normalised)")
        for name in ("depth", "num_heads", "patch_size", "in_chans", "embed_dim"):
            if getattr(self, name) < 1:
                raise VitkitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.conv_stem or self.conv_stem_strides:
            self._validate_conv_stem()
        if self.num_classes < 0:
            raise VitkitError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")

    def _validate_conv_stem(self) -> None:
        if self.hybrid_backbone:
            raise VitkitError("choose either conv_stem or hybrid_backbone, not both")
        strides = stem_strides(self.conv_stem, self.conv_stem_strides)
        if len(strides) != len(self.conv_stem) or any(s not in (1, 2) for s in strides):
            raise VitkitError(f"conv_stem_strides must give a stride of 1 or 2 for each of the {len(self.conv_stem)} "
                              f"conv_stem convs, got {tuple(strides)}")
        if self.patch_size != math.prod(strides):
            raise VitkitError(f"conv_stem's {len(strides)} convs have total stride {math.prod(strides)} but "
                              f"patch_size is {self.patch_size}; set them to match")


class DistilledOutput(NamedTuple):
    """Training-time output of a distilled ViT: class-token and distillation-token logits."""

    logits: torch.Tensor
    dist_logits: torch.Tensor


@register_family
class VisionTransformer(VitkitModel):
    family = "vit"
    token_layers = True
    config_cls = ViTConfig
    classifier = ("head", "head_dist")

    def __init__(self, config: ViTConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        d = c.embed_dim
        if c.hybrid_backbone:
            self.patch_embed = HybridEmbed(c.hybrid_backbone, c.hybrid_stages, c.patch_size, c.in_chans, d)
        elif c.conv_stem:
            self.patch_embed = ConvStemEmbed(tuple(c.conv_stem), c.in_chans, d, tuple(c.conv_stem_strides))
        else:
            self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, d)
        self.grid = self.patch_embed.grid(*c.img_size)
        self.num_prefix = int(c.class_token) + int(c.distilled)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if c.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.grid[0] * self.grid[1], d))
        self.pos_drop = nn.Dropout(c.drop_rate)
        dpr = drop_path_ramp(c.drop_path_rate, c.depth)
        self.blocks = nn.ModuleList(
            Block(d, c.num_heads, c.mlp_ratio, c.qkv_bias, c.qk_norm, c.init_values, c.drop_rate,
                  c.attn_drop_rate, dpr[i], c.norm_eps)
            for i in range(c.depth)
        )
        use_fc_norm = c.global_pool == "avg" if c.fc_norm is None else c.fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(d, eps=c.norm_eps)
        self.fc_norm = nn.LayerNorm(d, eps=c.norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head, self.head_dist = self._heads(c)
        self.num_features = d
        stride = self.patch_embed.patch_size[0]
        self.feature_info = FeatureInfoList(FeatureInfo(d, stride, f"blocks.{i}") for i in range(c.depth))
        self.grad_checkpointing = c.grad_checkpointing
        self.init_weights()

    def _heads(self, c: ViTConfig) -> tuple[nn.Module, nn.Module | None]:
        """The class-token head and (distilled) the distillation head; Identity / None when headless."""
        head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes else nn.Identity()
        return head, (nn.Linear(c.embed_dim, c.num_classes) if c.distilled and c.num_classes else None)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New head(s) for ``num_classes`` (0: headless); ``global_pool`` "token", "avg" or ""
        (every token) changes the pooling, None keeps it. The norms stay as they are."""
        c = self.config
        pool = c.global_pool if global_pool is None else global_pool
        has_fc_norm = not isinstance(self.fc_norm, nn.Identity)
        fc_norm = c.fc_norm if c.fc_norm is not None or (pool == "avg") == has_fc_norm else has_fc_norm
        cfg = dataclasses.replace(c, num_classes=num_classes, global_pool=pool, fc_norm=fc_norm)
        cfg.validate()
        self.config = cfg
        self.head, self.head_dist = self._heads(cfg)
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear):
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    def init_weights(self) -> None:
        """Truncated-normal(0.02) for tokens, pos-embedding and linear layers (as in ViT/DeiT)."""
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Prepend prefix tokens and add E_pos (resampled on the fly for another grid)."""
        pos = resample_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        x = torch.cat(prefix + [x], dim=1) if prefix else x  # (B, P + N, D)
        return self.pos_drop(x + pos)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        self.check_input(x)
        x, grid = self.patch_embed(x)  # (B, N, D)
        return self._pos_embed(x, grid), grid

    def _run_block(self, block: nn.Module, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        return maybe_checkpoint(block, x, num_queries, enable=self.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor):
        """Logits: ``forward_head(forward_features(x))`` with less work. Class-token pooling reads
        only the P prefix tokens, so the last block computes just their outputs (their attention
        rows, projection and MLP; keys and values still come from every token)."""
        return self.forward_head(self._encode(x, self.num_prefix if self.config.global_pool == "token" else None))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, P + N, D)."""
        return self._encode(x)

    def _encode(self, x: torch.Tensor, last_queries: int | None = None) -> torch.Tensor:
        """Embed, run the blocks (the last one for its first ``last_queries`` tokens only), norm."""
        x, _ = self._embed(x)
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, last_queries if i == len(self.blocks) - 1 else None)
        return self.norm(x)  # (B, P + N or last_queries, D)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, P + N, D) -> (B, D): class token or mean of the patch tokens ("": all tokens)."""
        if self.config.global_pool == "avg":
            return x[:, self.num_prefix:].mean(dim=1)
        return x if self.config.global_pool == "" else x[:, 0]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False):
        """Logits (B, classes); a distilled model averages its two heads at eval and
        returns both as :class:`DistilledOutput` while training. Headless, the pooled features."""
        x = self.head_drop(self.fc_norm(self.pool(feats)))  # (B, D)
        if self.dist_token is None:
            return x if pre_logits else self.head(x)
        x_dist = self.head_drop(feats[:, 1])
        if pre_logits or self.head_dist is None:
            return (x + x_dist) / 2
        logits, dist_logits = self.head(x), self.head_dist(x_dist)
        if self.training:
            return DistilledOutput(logits, dist_logits)
        return (logits + dist_logits) / 2

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """Block outputs (see :meth:`VitkitModel.forward_intermediates`): the patch tokens as maps
        (B, D, H/p, W/p) or as tokens (B, N, D); the final features are ``forward_features``'s
        normalised tokens (B, P + N, D) (of the last block run, with ``stop_early``)."""
        self.check_output_fmt(output_fmt)
        take = self.take_indices(indices)
        x, grid = self._embed(x)
        stop = take[-1] + 1 if stop_early or intermediates_only else len(self.blocks)
        outs = []
        for i, block in enumerate(self.blocks[:stop]):
            x = self._run_block(block, x)
            if i in take:
                outs.append(self._split_tokens(self.norm(x) if norm else x, grid, output_fmt, return_prefix_tokens))
        return outs if intermediates_only else (self.norm(x), outs)

    def _split_tokens(self, x: torch.Tensor, grid, output_fmt: str, with_prefix: bool):
        """(B, P + N, D) -> patch part (B, D, gh, gw) or (B, N, D), paired with the prefix (B, P, D) if asked."""
        gh, gw = grid
        prefix, patches = x[:, :self.num_prefix], x[:, self.num_prefix:]
        if output_fmt == "NCHW":
            patches = patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)  # (B, D, gh, gw)
        return (patches, prefix) if with_prefix and self.num_prefix else patches

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """z_0 (embedding + E_pos) and every block's output z_1..z_L, each (B, P + N, D), un-normalised."""
        states = [self._embed(x)[0]]
        for block in self.blocks:
            states.append(self._run_block(block, states[-1]))
        return states

    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep blocks 0..max(indices); ``prune_norm`` drops the final norm, ``prune_head`` the head(s)
        and ``fc_norm`` (the model then returns pooled features)."""
        take = self.take_indices(indices)
        self.blocks = self.blocks[:take[-1] + 1]
        self.feature_info = self.feature_info[:take[-1] + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm, self.head = nn.Identity(), nn.Identity()
            self.head_dist = nn.Identity() if self.head_dist is not None else None
        return take

    def no_weight_decay(self) -> set[str]:
        """Biases, norm scales, LayerScale, and the tokens and E_pos (Eq. 1)."""
        tokens = {n for n in ("cls_token", "dist_token", "pos_embed") if getattr(self, n) is not None}
        return super().no_weight_decay() | tokens

    def layer_id(self, name: str) -> int:
        """0 = patch embedding, tokens and E_pos; block i -> i + 1; final norm and heads -> depth + 1."""
        if name.startswith(("cls_token", "dist_token", "pos_embed", "patch_embed.")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample a saved E_pos to this model's patch grid (load at another image size)."""
        pos = state_dict.get("pos_embed")
        saved_prefix = int("cls_token" in state_dict) + int("dist_token" in state_dict)
        if pos is not None and pos.shape != self.pos_embed.shape and saved_prefix == self.num_prefix:
            n_old = pos.shape[1] - self.num_prefix
            side = int(math.isqrt(n_old))
            if side * side != n_old:
                raise VitkitError(
                    f"saved pos_embed has {n_old} patch positions, not a square grid; "
                    "load it at the image size it was saved with"
                )
            state_dict = dict(state_dict, pos_embed=resample_pos_embed(pos, self.grid, (side, side), self.num_prefix))
        return state_dict


_SIZES = {  # name: (embed_dim, depth, num_heads) — SPEC §1 / timm reference sizes
    "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
    "large": (1024, 24, 16), "huge": (1280, 32, 16),
}


def _paper_presets() -> dict[str, ViTConfig]:
    out = {}
    for size, (d, depth, heads) in _SIZES.items():
        for patch in ((14,) if size == "huge" else (16, 32)):
            out[f"vit_{size}_patch{patch}_224"] = ViTConfig(patch_size=patch, embed_dim=d, depth=depth,
                                                            num_heads=heads)
    for size in ("tiny", "small", "base"):
        d, depth, heads = _SIZES[size]
        out[f"deit_{size}_patch16_224"] = ViTConfig(embed_dim=d, depth=depth, num_heads=heads)
        out[f"deit_{size}_distilled_patch16_224"] = ViTConfig(embed_dim=d, depth=depth, num_heads=heads,
                                                              distilled=True)
    for backbone, d, depth, heads in (("resnet18", 384, 12, 6), ("resnet50", 768, 12, 12)):
        out[f"vit_hybrid_{backbone}_224"] = ViTConfig(patch_size=1, embed_dim=d, depth=depth, num_heads=heads,
                                                      hybrid_backbone=backbone, hybrid_stages=3)
    return out


def _small_image_presets() -> dict[str, ViTConfig]:
    """Sized for CPU training on 8-32 px data (digits, Fashion-MNIST, CIFAR-like)."""
    mini = dict(embed_dim=192, depth=6, num_heads=3, num_classes=10)
    fmnist = dict(img_size=28, in_chans=1, mlp_ratio=2.0, class_token=False, global_pool="avg", num_classes=10)
    return {
        "vit_mini_patch2_8": ViTConfig(img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=4, num_heads=4,
                                       num_classes=10),
        "vit_mini_patch4_28": ViTConfig(img_size=28, patch_size=4, in_chans=1, **mini),
        # patchify baseline of the fast recipe's stem comparison: 16 tokens of 7x7, mean-pooled
        "vit_tiny_patch7_28": ViTConfig(patch_size=7, embed_dim=128, depth=4, num_heads=4, **fmnist),
        # ViT_C stem (3 stride-2 convs, 28 -> 14 -> 7 -> 4), 16 tokens, 128 wide, 4 deep, layer-scale 0.1
        # (CaiT; +0.3 points at the fast recipe's 6 epochs)
        "vit_tiny_convstem_28": ViTConfig(patch_size=8, conv_stem=(32, 64, 128), embed_dim=128, depth=4,
                                          num_heads=4, init_values=0.1, **fmnist),
        # recipes fmnist_vit_fast and fmnist_vit_long: a deeper ViT_C stem, a stride-1 3x3 conv at each
        # resolution (28, 14, 7, 4 px; 7 convs in all) on the same 16-token encoder
        "vit_tiny_convstem7_28": ViTConfig(patch_size=8, conv_stem=(16, 32, 32, 64, 64, 128, 128),
                                           conv_stem_strides=(1, 2, 1, 2, 1, 2, 1), embed_dim=128, depth=4,
                                           num_heads=4, init_values=0.1, **fmnist),
        # a wider ViT_C stem and a 192-wide, 6-deep encoder on the same 4x4 token grid
        "vit_mini_convstem_28": ViTConfig(patch_size=8, conv_stem=(48, 96, 192), embed_dim=192, depth=6,
                                          num_heads=6, **fmnist),
        "vit_mini_patch2_28": ViTConfig(img_size=28, patch_size=2, in_chans=1, **mini),
        "vit_mini_patch4_32": ViTConfig(img_size=32, patch_size=4, in_chans=3, **mini),
        "vit_small_patch4_32": ViTConfig(img_size=32, patch_size=4, in_chans=3, embed_dim=384, depth=12,
                                         num_heads=6, num_classes=10),
        "deit_mini_distilled_patch4_28": ViTConfig(img_size=28, patch_size=4, in_chans=1, distilled=True, **mini),
        "vit_hybrid_mini_resnet18_32": ViTConfig(img_size=32, patch_size=1, in_chans=3, hybrid_backbone="resnet18",
                                                 hybrid_stages=2, **mini),
    }


def _test_presets() -> dict[str, ViTConfig]:
    """Tiny models for unit tests (well under a second each)."""
    tiny = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5, mlp_ratio=2.0)
    return {
        "vit_test": ViTConfig(**tiny),
        "vit_test_avg": ViTConfig(**dict(tiny, class_token=False, global_pool="avg")),
        "deit_test_distilled": ViTConfig(**dict(tiny, distilled=True)),
        "vit_convstem_test": ViTConfig(**dict(tiny, patch_size=4, conv_stem=(8, 16))),
        "vit_hybrid_test": ViTConfig(**dict(tiny, img_size=32, patch_size=1, hybrid_backbone="resnet18",
                                            hybrid_stages=2)),
    }


register_presets(VisionTransformer, _paper_presets(), tags=("vit",))
register_presets(VisionTransformer, _small_image_presets(), tags=("vit", "small"))
register_presets(VisionTransformer, _test_presets(), tags=("vit", "test"))
