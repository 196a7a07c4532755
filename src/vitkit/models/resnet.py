"""ResNet baselines (He et al., CVPR 2016): the shared :class:`~vitkit.layers.resnet.ResNetTrunk`,
global average pool and FC, randomly initialised.

Module names follow torchvision (``trunk.conv1``, ``trunk.bn1``, ``trunk.layer1..4``, ``fc``): a
torchvision state dict of the same depth and width loads after prefixing ``trunk.``.
``small_stem`` swaps the 7x7/2 stem and max-pool for a 3x3/1 convolution, for 28-32 px images.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn

from vitkit.config import image_size, nest_fields
from vitkit.errors import VitkitError
from vitkit.layers.helpers import drop_path_ramp
from vitkit.layers.resnet import LAYOUTS, ResNetTrunk, num_blocks
from vitkit.models.base import FeatureInfo, FeatureInfoList, Indices, VitkitModel
from vitkit.models.catalog import register_family, register_presets


@dataclass(frozen=True)
class ResNetTrunkConfig:
    """The ResNet trunk (stem + stages): the backbone that VT-ResNet and the FPN models nest."""

    depth: Literal[18, 34, 50, 101] = 18
    base_width: int = 64  # stage widths: base, 2 base, 4 base, 8 base (x4 for bottlenecks)
    small_stem: bool = False  # 3x3 stride-1 stem without max-pool (28-32 px images)
    drop_path_rate: float = 0.0  # stochastic depth of the model's deepest residual unit (linear ramp from 0)

    def validate(self) -> None:
        if self.depth not in LAYOUTS:
            raise VitkitError(f"unknown ResNet depth {self.depth}; choose one of {', '.join(map(str, LAYOUTS))}")
        if self.base_width < 1:
            raise VitkitError(f"base_width must be >= 1, got {self.base_width}")


def nest_trunk_fields(data: dict) -> dict:
    """A config dict with the trunk's fields at the top (an earlier layout) -> under ``backbone``."""
    return nest_fields(data, "backbone", [f.name for f in fields(ResNetTrunkConfig)])


@dataclass(frozen=True)
class ResNetConfig(ResNetTrunkConfig):
    """A ResNet classifier: its trunk's fields plus the input and the head."""

    img_size: int | tuple[int, int] = 224  # stored as (H, W)
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: Literal["avg", ""] = "avg"  # "": no pooling, the FC reads every position

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", image_size(self.img_size))

    def validate(self) -> None:
        super().validate()
        if self.in_chans < 1:
            raise VitkitError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.num_classes < 0:
            raise VitkitError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")


def replace_head(cfg, num_classes: int, global_pool: str | None):
    """``cfg`` with another ``num_classes`` and (unless None) ``global_pool`` ("avg" or ""), checked."""
    pool = cfg.global_pool if global_pool is None else global_pool
    if pool not in ("avg", ""):
        raise VitkitError(f"global_pool must be 'avg' or '' (no pooling), got {pool!r}")
    cfg = dataclasses.replace(cfg, num_classes=num_classes, global_pool=pool)
    cfg.validate()
    return cfg


def new_fc(channels: int, num_classes: int) -> nn.Module:
    """The classifier: a freshly initialised Linear, or Identity when headless."""
    return nn.Linear(channels, num_classes) if num_classes else nn.Identity()


def trunk_from(cfg: ResNetTrunkConfig, in_chans: int, num_stages: int = 4, extra_units: int = 0) -> ResNetTrunk:
    """The trunk a trunk config describes, for ``in_chans`` input channels. Its blocks take the
    first rates of the stochastic-depth ramp over its residual blocks and ``extra_units`` more
    residual units that follow it in the model (the rest of the ramp is theirs)."""
    blocks = num_blocks(cfg.depth, num_stages)
    rates = drop_path_ramp(cfg.drop_path_rate, blocks + extra_units)[:blocks]
    return ResNetTrunk(cfg.depth, in_chans, cfg.base_width, cfg.small_stem, num_stages, rates)


def trunk_feature_info(trunk: ResNetTrunk, prefix: str) -> FeatureInfoList:
    """One entry per stage of ``trunk`` (a submodule named ``prefix``)."""
    return FeatureInfoList(FeatureInfo(c, r, f"{prefix}.layer{i + 1}")
                           for i, (c, r) in enumerate(zip(trunk.channels, trunk.reductions, strict=True)))


@register_family
class ResNet(VitkitModel):
    """Plain ResNet classifier: trunk, global average pool, FC."""

    family = "resnet"
    config_cls = ResNetConfig
    classifier = ("fc",)

    def __init__(self, config: ResNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.trunk = trunk_from(config, config.in_chans)
        self.num_features = self.trunk.channels[-1]
        self.fc = new_fc(self.num_features, config.num_classes)
        self.feature_info = trunk_feature_info(self.trunk, "trunk")

    def _stages(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        self.check_input(x, min_size=self.trunk.reductions[-1])
        return self.trunk.stages(x, upto)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> final feature map (B, C, H/32, W/32) (H/8 with the small stem)."""
        return self._stages(x)[-1]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> logits (B, K), or per position (B, K, h, w) with global_pool=""."""
        if self.config.global_pool == "":
            return feats if pre_logits else self.fc(feats.movedim(1, -1)).movedim(-1, 1)
        pooled = feats.mean(dim=(2, 3))  # (B, C)
        return pooled if pre_logits else self.fc(pooled)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.config = replace_head(self.config, num_classes, global_pool)
        self.fc = new_fc(self.num_features, num_classes)

    def layer_id(self, name: str) -> int:
        """0 = stem, k = stage k (1..4), head = 5."""
        if name.startswith("trunk."):
            return self.trunk.layer_id(name[len("trunk."):])
        return self.trunk.num_stages + 1

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """Stage outputs (indices 0..3), NCHW (see :meth:`VitkitModel.forward_intermediates`); the final
        feature is the last stage's map. There is no final norm and there are no prefix tokens."""
        return self.stage_intermediates(x, indices, output_fmt, stop_early, intermediates_only)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem output and every stage's output, NCHW."""
        self.check_input(x, min_size=self.trunk.reductions[-1])
        return self.trunk.states(x)

    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep stages 0..max(indices); ``prune_head`` drops the FC (the model then returns pooled features)."""
        take = self.take_indices(indices)
        self.check_head_kept(not prune_head and take[-1] + 1 < self.trunk.num_stages, "the last stage")
        self.trunk.truncate(take[-1] + 1)
        self.feature_info = self.feature_info[:take[-1] + 1]
        self.num_features = self.trunk.channels[-1]
        if prune_head:
            self.fc = nn.Identity()
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass."""
        self.grad_checkpointing = self.trunk.grad_checkpointing = enable


def _presets() -> dict[str, ResNetConfig]:
    paper = {f"resnet{d}": ResNetConfig(depth=d) for d in LAYOUTS}
    small = {
        "resnet18_28": ResNetConfig(img_size=28, in_chans=1, num_classes=10, small_stem=True),
        "resnet18_32": ResNetConfig(img_size=32, in_chans=3, num_classes=10, small_stem=True),
        "resnet34_32": ResNetConfig(img_size=32, in_chans=3, num_classes=10, depth=34, small_stem=True),
    }
    test = {
        "resnet_test": ResNetConfig(img_size=32, num_classes=5, base_width=8),
        "resnet_test_small": ResNetConfig(img_size=16, in_chans=1, num_classes=5, base_width=8, small_stem=True),
        "resnet_test_bottleneck": ResNetConfig(img_size=32, num_classes=5, depth=50, base_width=4),
    }
    return {**paper, **small, **test}


_ALL = _presets()
register_presets(ResNet, {k: v for k, v in _ALL.items() if "_" not in k}, tags=("resnet",))
register_presets(ResNet, {k: v for k, v in _ALL.items() if "_" in k and "test" not in k}, tags=("resnet", "small"))
register_presets(ResNet, {k: v for k, v in _ALL.items() if "test" in k}, tags=("resnet", "test"))
