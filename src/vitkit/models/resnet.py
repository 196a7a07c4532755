"""ResNet baselines (He et al., CVPR 2016): the shared :class:`~vitkit.layers.resnet.ResNetTrunk`,
global average pool and FC, randomly initialised.

Module names follow torchvision (``trunk.conv1``, ``trunk.bn1``, ``trunk.layer1..4``, ``fc``): a
torchvision state dict of the same depth and width loads after prefixing ``trunk.``.
``small_stem`` swaps the 7x7/2 stem and max-pool for a 3x3/1 convolution, for 28-32 px images.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.layers.resnet import LAYOUTS, ResNetTrunk
from vitkit.models.base import FeatureInfo, VitkitModel
from vitkit.models.catalog import register_family, register_presets


@dataclass(frozen=True)
class ResNetConfig:
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    depth: Literal[18, 34, 50, 101] = 18
    base_width: int = 64  # stage widths: base, 2 base, 4 base, 8 base (x4 for bottlenecks)
    small_stem: bool = False  # 3x3 stride-1 stem without max-pool (28-32 px images)

    def validate(self) -> None:
        if self.depth not in LAYOUTS:
            raise VitkitError(f"unknown ResNet depth {self.depth}; choose one of {', '.join(map(str, LAYOUTS))}")
        for name in ("in_chans", "base_width"):
            if getattr(self, name) < 1:
                raise VitkitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise VitkitError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")


def trunk_from(cfg, num_stages: int = 4) -> ResNetTrunk:
    """The trunk a ResNet-shaped config describes (depth, in_chans, base_width, small_stem)."""
    return ResNetTrunk(cfg.depth, cfg.in_chans, cfg.base_width, cfg.small_stem, num_stages)


@register_family
class ResNet(VitkitModel):
    """Plain ResNet classifier: trunk, global average pool, FC."""

    family = "resnet"
    config_cls = ResNetConfig

    def __init__(self, config: ResNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.trunk = trunk_from(config)
        self.num_features = self.trunk.channels[-1]
        self.fc = nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()
        self.feature_info = [FeatureInfo(c, r) for c, r in zip(self.trunk.channels, self.trunk.reductions, strict=True)]

    def _stages(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        self.check_input(x, min_size=self.trunk.reductions[-1])
        return self.trunk.stages(x, upto)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> final feature map (B, C, H/32, W/32) (H/8 with the small stem)."""
        return self._stages(x)[-1]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = feats.mean(dim=(2, 3))  # (B, C)
        return pooled if pre_logits else self.fc(pooled)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | int | None = None):
        """Stage outputs at ``indices`` (0..3), NCHW."""
        take = self.resolve_indices(indices, 4)
        outs = self._stages(x, max(take) + 1)
        return [outs[i] for i in take]


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
