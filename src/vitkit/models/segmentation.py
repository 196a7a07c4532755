"""Semantic segmentation: panoptic-FPN semantic head on ResNet, VT-FPN (SPEC §3), and a
simple dense head on ViT ``forward_intermediates``. ``forward`` returns logits (B, K, H, W).

FPN neck (Lin et al. 2017):  L_i = lateral_i(C_i) (1x1);  P_5 = L_5;  P_i = L_i + up(P_{i+1});
                             P_i <- conv3x3_i(P_i)
VT-FPN neck (Wu et al.):     the per-level conv3x3_i replaced by VT modules: T_i = tokenizer_i(P_i)
                             (8 tokens per level), [T_2..T_5] <- one transformer over all tokens,
                             P_i <- projector_i(P_i, T_i)
Semantic head (Kirillov et al. 2019): per level a stack of conv3x3-GN-ReLU (+2x up) down to
stride 4, sum, 1x1 classifier, bilinear upsample to the input.
The neck is the submodule ``neck`` (its FLOPs are measured separately by ``vitkit flops``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.fx
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vitkit.config import image_size, nest_fields
from vitkit.errors import VitkitError
from vitkit.layers.helpers import maybe_checkpoint
from vitkit.layers.vt import TokenTransformer, VTConfig, VTModule
from vitkit.models.base import FeatureInfoList, Indices, VitkitModel
from vitkit.models.catalog import register_family, register_presets
from vitkit.models.resnet import ResNetTrunkConfig, nest_trunk_fields, trunk_feature_info, trunk_from
from vitkit.models.vit import VisionTransformer, ViTConfig

torch.fx.wrap("rearrange")  # einops needs real tensors; traced as one call


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    groups = math.gcd(32, max(1, cout // 2))  # at least 2 channels per group (1x1 maps at batch 1)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout),
                         nn.ReLU(inplace=True))


class FPNNeck(nn.Module):
    """FPN: lateral 1x1, top-down nearest upsampling and sum, then one 3x3 conv per level."""

    def __init__(self, in_channels: Sequence[int], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in in_channels)

    def top_down(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """C_2..C_5 -> P_2..P_5 before the per-level processing, each (B, D, H_i, W_i)."""
        outs = [self.lateral[-1](feats[-1])]
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            outs.insert(0, lat(f) + F.interpolate(outs[0], size=f.shape[-2:], mode="nearest"))
        return outs

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(p) for conv, p in zip(self.output, self.top_down(feats), strict=True)]


class VTFPNNeck(FPNNeck):
    """VT-FPN: per-level tokenizers, ONE token transformer over all levels' tokens, per-level projectors.

    Each level is projected back from its own (transformed) tokens.
    """

    def __init__(self, in_channels: Sequence[int], dim: int, cfg: VTConfig):
        super().__init__(in_channels, dim)
        del self.output
        cfg.validate(dim)
        level_cfg = dataclasses.replace(cfg, transformer="none")
        self.levels = nn.ModuleList(VTModule(dim, level_cfg, first=True) for _ in in_channels)
        ct = cfg.token_channels or dim
        self.transformer = (TokenTransformer(ct, cfg.transformer, cfg.num_heads, cfg.qk_ratio, cfg.ffn_ratio)
                            if cfg.transformer != "none" else None)
        self.num_tokens = cfg.num_tokens

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        maps = self.top_down(feats)
        flat = [rearrange(p, "b c h w -> b (h w) c") for p in maps]  # each (B, H_i W_i, D)
        tokens = torch.cat([vt.tokenize(x, p.shape[-2:]) for vt, x, p in zip(self.levels, flat, maps, strict=True)], 1)
        if self.transformer is not None:
            tokens = self.transformer(tokens)  # (B, levels * L, C_T)
        per_level = [tokens[:, i * self.num_tokens:(i + 1) * self.num_tokens] for i in range(len(maps))]
        return [rearrange(vt.project(x, t), "b (h w) c -> b c h w", h=p.shape[-2], w=p.shape[-1])
                for vt, x, t, p in zip(self.levels, flat, per_level, maps, strict=True)]


class SemanticHead(nn.Module):
    """Panoptic-FPN semantic branch: per-level conv3x3-GN-ReLU stacks upsampled to the finest level, summed."""

    def __init__(self, dim: int, head_dim: int, num_levels: int, num_classes: int):
        super().__init__()
        steps = [max(1, i) for i in range(num_levels)]  # level i is 2^i coarser than the finest
        self.branches = nn.ModuleList(
            nn.ModuleList(_conv_gn_relu(dim if k == 0 else head_dim, head_dim) for k in range(n)) for n in steps)
        self.classifier = nn.Conv2d(head_dim, num_classes, 1) if num_classes else nn.Identity()

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """P_2..P_5 -> summed map at the finest level (B, head_dim, H_2, W_2)."""
        sizes = [m.shape[-2:] for m in maps]
        total = 0
        for i, (branch, y) in enumerate(zip(self.branches, maps, strict=True)):
            for k, block in enumerate(branch):
                y = block(y)
                if i - k - 1 >= 0:  # 2x upsampling towards the finest level
                    y = F.interpolate(y, size=sizes[i - k - 1], mode="bilinear", align_corners=False)
            total = total + y
        return total


@dataclass(frozen=True)
class SemanticFPNConfig:
    img_size: int | tuple[int, int] = 512  # stored as (H, W)
    in_chans: int = 3
    num_classes: int = 20
    backbone: ResNetTrunkConfig = field(default_factory=lambda: ResNetTrunkConfig(depth=50))
    neck: Literal["fpn", "vt_fpn"] = "fpn"
    fpn_dim: int = 256
    head_dim: int = 128
    vt: VTConfig = field(default_factory=lambda: VTConfig(num_tokens=8))

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", image_size(self.img_size))

    @classmethod
    def migrate(cls, data: dict) -> dict:
        return nest_trunk_fields(data)

    def validate(self) -> None:
        self.backbone.validate()
        for name in ("in_chans", "num_classes", "fpn_dim", "head_dim"):
            if getattr(self, name) < 1:
                raise VitkitError(f"{name} must be >= 1, got {getattr(self, name)}")


class _DenseModel(VitkitModel):
    """Shared dense-model plumbing: forward(x) = upsampled logits (B, K, H, W).

    The backbone contract (intermediates, hidden states, pruning) is answered by the backbone:
    its layers' outputs, and its final feature. Pruning drops the dense head (``neck`` + ``head``).
    """

    task = "segmentation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), size=(x.shape[-2], x.shape[-1]))

    def _upsample(self, logits: torch.Tensor, size, stride: int) -> torch.Tensor:
        size = size or (logits.shape[-2] * stride, logits.shape[-1] * stride)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _check_head(self) -> None:
        if self.head is None:
            raise VitkitError(f"this {type(self).__name__} was pruned to its backbone; use forward_intermediates")

    def _prune_head(self, prune_head: bool, head_needs_pruned: bool, what: str) -> None:
        self.check_head_kept(not prune_head and head_needs_pruned, what)
        if prune_head:
            self.neck = self.head = None


@register_family
class SemanticFPN(_DenseModel):
    family = "semantic_fpn"
    config_cls = SemanticFPNConfig
    classifier = ("head.classifier",)

    def __init__(self, config: SemanticFPNConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.backbone = trunk_from(c.backbone, c.in_chans)
        chans, reds = self.backbone.channels, self.backbone.reductions
        self.neck = FPNNeck(chans, c.fpn_dim) if c.neck == "fpn" else VTFPNNeck(chans, c.fpn_dim, c.vt)
        self.head = SemanticHead(c.fpn_dim, c.head_dim, len(reds), c.num_classes)
        self.num_features = c.head_dim
        self.feature_info = trunk_feature_info(self.backbone, "backbone")

    def _stages(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        self.check_input(x, min_size=self.backbone.reductions[-1])
        return self.backbone.stages(x, upto)

    def layer_id(self, name: str) -> int:
        """0 = stem, 1..4 = ResNet stages, neck = 5, head = 6."""
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone."):])
        return self.backbone.num_stages + (1 if name.startswith("neck.") else 2)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> neck outputs P_2..P_5, each (B, fpn_dim, H/r_i, W/r_i)."""
        self._check_head()
        return maybe_checkpoint(self.neck, self._stages(x), enable=self.grad_checkpointing)

    def forward_head(self, feats: Sequence[torch.Tensor], pre_logits: bool = False, size=None) -> torch.Tensor:
        """Pyramid -> logits (B, K, H, W) at ``size`` (default: finest level x its stride)."""
        self._check_head()
        fused = self.head.fuse(feats)  # (B, head_dim, H/r_0, W/r_0)
        return fused if pre_logits else self._upsample(self.head.classifier(fused), size,
                                                       self.backbone.reductions[0])

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """Backbone stage outputs (indices 0..3), NCHW; the final feature is the last stage's map."""
        return self.stage_intermediates(x, indices, output_fmt, stop_early, intermediates_only)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stem output and every stage's output, NCHW."""
        self.check_input(x, min_size=self.backbone.reductions[-1])
        return self.backbone.states(x)

    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep backbone stages 0..max(indices); ``prune_head`` drops the FPN neck and the head."""
        take = self.take_indices(indices)
        self._prune_head(prune_head, take[-1] + 1 < self.backbone.num_stages, "every backbone stage")
        self.backbone.truncate(take[-1] + 1)
        self.feature_info = self.feature_info[:take[-1] + 1]
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each backbone stage's activations, and the neck's, in the backward pass."""
        self.grad_checkpointing = self.backbone.grad_checkpointing = enable


@dataclass(frozen=True)
class ViTSegConfig:
    """A ViT backbone and a dense head. The backbone's ``img_size``, ``in_chans`` and
    ``num_classes`` follow the fields here; it is built without its classifier."""

    img_size: int | tuple[int, int] = 224  # stored as (H, W)
    in_chans: int = 3
    num_classes: int = 21
    backbone: ViTConfig = field(default_factory=lambda: ViTConfig(embed_dim=384, depth=12, num_heads=6))
    indices: tuple[int, ...] = (-1,)  # blocks whose outputs are concatenated
    decoder_dim: int = 256

    derived: ClassVar[dict[str, str]] = {  # set by __post_init__ (see apply_overrides)
        "backbone.img_size": "set img_size instead", "backbone.in_chans": "set in_chans instead",
        "backbone.num_classes": "set num_classes instead"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", image_size(self.img_size))
        backbone = dataclasses.replace(self.backbone, img_size=self.img_size, in_chans=self.in_chans,
                                       num_classes=self.num_classes)
        object.__setattr__(self, "backbone", backbone)

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """The flat layout (the backbone's patch_size, embed_dim, depth, num_heads at the top) -> nested."""
        return nest_fields(data, "backbone", ("patch_size", "embed_dim", "depth", "num_heads"))


@register_family
class ViTSeg(_DenseModel):
    """ViT + simple dense head: concat block maps, 1x1 conv-BN-ReLU (``neck``), 3x3 conv, 1x1 classifier."""

    family = "vit_seg"
    token_layers = True
    config_cls = ViTSegConfig
    classifier = ("head.3",)

    def __init__(self, config: ViTSegConfig):
        super().__init__()
        if config.num_classes < 1 or config.decoder_dim < 1 or not config.indices:
            raise VitkitError("ViTSeg needs num_classes >= 1, decoder_dim >= 1 and at least one block index")
        self.config = c = config
        self.backbone = VisionTransformer(dataclasses.replace(c.backbone, num_classes=0))  # no classifier
        self.backbone.take_indices(list(c.indices))
        d = c.decoder_dim
        self.neck = nn.Sequential(nn.Conv2d(c.backbone.embed_dim * len(c.indices), d, 1, bias=False),
                                  nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.BatchNorm2d(d),
                                  nn.ReLU(inplace=True), nn.Conv2d(d, c.num_classes, 1))
        self.num_features = d
        self.feature_info = self._prefixed(self.backbone.feature_info)
        self.grad_checkpointing = self.backbone.grad_checkpointing  # backbone.grad_checkpointing in the config

    def no_weight_decay(self) -> set[str]:
        """The backbone's set (tokens, E_pos, norms, biases) and the decoder's biases and BN scales."""
        return super().no_weight_decay() | {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def layer_id(self, name: str) -> int:
        """The ViT's ids for the backbone (0 .. depth + 1), then depth + 2 for the decoder."""
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone."):])
        return len(self.backbone.blocks) + 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> decoder map (B, decoder_dim, H/p, W/p)."""
        self._check_head()
        maps = self.backbone.forward_intermediates(x, list(self.config.indices), norm=True, intermediates_only=True)
        return self.neck(torch.cat(maps, dim=1))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False, size=None) -> torch.Tensor:
        self._check_head()
        if pre_logits:
            return feats
        return self._upsample(self.head(feats), size, self.config.backbone.patch_size)

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """The ViT backbone's (see :meth:`VisionTransformer.forward_intermediates`)."""
        return self.backbone.forward_intermediates(x, indices, norm, output_fmt, return_prefix_tokens,
                                                   stop_early, intermediates_only)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ViT backbone's token states (B, P + N, D): embedding output and every block's output."""
        return self.backbone.hidden_states(x)

    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep blocks 0..max(indices); ``prune_head`` drops the dense head (its ``neck`` and ``head``)."""
        take = self.take_indices(indices)
        read = self.backbone.take_indices(list(self.config.indices))
        self._prune_head(prune_head, prune_norm or take[-1] < read[-1], f"blocks {read} after the final norm")
        self.backbone.prune_intermediate_layers(take, prune_norm, prune_head=True)
        self.feature_info = self._prefixed(self.backbone.feature_info)
        return take

    @staticmethod
    def _prefixed(info: FeatureInfoList) -> FeatureInfoList:
        return FeatureInfoList(dataclasses.replace(f, module=f"backbone.{f.module}") for f in info)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each backbone block's activations in the backward pass."""
        self.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)


def _presets() -> tuple[dict, dict, dict]:
    vt_paper = VTConfig(num_tokens=8)
    paper = {f"{neck}_resnet50_512": SemanticFPNConfig(neck=neck) for neck in ("fpn", "vt_fpn")}
    paper["vit_seg_small_patch16_224"] = ViTSegConfig()
    small64 = dict(img_size=64, num_classes=4, backbone=ResNetTrunkConfig(depth=18), fpn_dim=128, head_dim=64)
    small = {f"{neck}_resnet18_64": SemanticFPNConfig(neck=neck, **small64) for neck in ("fpn", "vt_fpn")}
    small["vit_seg_mini_patch4_64"] = ViTSegConfig(
        img_size=64, num_classes=4, backbone=ViTConfig(patch_size=4, embed_dim=192, depth=6, num_heads=3),
        indices=(2, 5), decoder_dim=128)
    tiny = dict(img_size=32, num_classes=3, backbone=ResNetTrunkConfig(depth=18, base_width=8), fpn_dim=16, head_dim=8)
    test = {
        "fpn_test": SemanticFPNConfig(**tiny),
        "vt_fpn_test": SemanticFPNConfig(neck="vt_fpn", **tiny, vt=dataclasses.replace(vt_paper, num_tokens=4)),
        "vit_seg_test": ViTSegConfig(img_size=16, num_classes=3,
                                     backbone=ViTConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2),
                                     indices=(0, 1), decoder_dim=16),
    }
    return paper, small, test


def _register() -> None:
    for group, tags in zip(_presets(), (("seg",), ("seg", "small"), ("seg", "test")), strict=True):
        for name, cfg in group.items():
            register_presets(ViTSeg if isinstance(cfg, ViTSegConfig) else SemanticFPN, {name: cfg}, tags=tags)


_register()
