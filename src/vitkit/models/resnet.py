"""ResNet baselines (He et al., CVPR 2016) from torchvision blocks, randomly initialised.

Module names follow torchvision (``trunk.conv1``, ``trunk.bn1``, ``trunk.layer1..4``,
``fc``): a torchvision state dict of the same depth and width loads after prefixing ``trunk.``. ``small_stem`` swaps the 7x7/2 stem and
max-pool for a 3x3/1 convolution, for 28-32 px images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vitkit.errors import VitkitError
from vitkit.models.base import FeatureInfo, VitkitModel
from vitkit.registry import register_family, register_presets

LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


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


class ResNetTrunk(nn.Module):
    """Stem + the first ``num_stages`` stages; ``channels``/``reductions`` per stage."""

    def __init__(self, depth: int, in_chans: int, base_width: int = 64, small_stem: bool = False,
                 num_stages: int = 4):
        super().__init__()
        block, layers = LAYOUTS[depth]
        w = base_width
        if small_stem:
            self.conv1 = nn.Conv2d(in_chans, w, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, w, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = w
        self.num_stages = num_stages
        for i in range(num_stages):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w * 2**i, layers[i], 1 if i == 0 else 2))
        stem = 1 if small_stem else 4
        self.channels = [w * 2**i * block.expansion for i in range(num_stages)]
        self.reductions = [stem * 2**i for i in range(num_stages)]
        self._init()

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        out = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        out += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def _init(self) -> None:
        """torchvision's ResNet initialisation (Kaiming-normal fan-out convolutions, unit BN)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages 1..``upto`` (default: all), each (B, C_i, H/r_i, W/r_i)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(upto or self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


def trunk_from(cfg, num_stages: int = 4) -> ResNetTrunk:
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
        self.feature_info = [FeatureInfo(c, r) for c, r in zip(self.trunk.channels, self.trunk.reductions)]

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
