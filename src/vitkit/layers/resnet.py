"""ResNet trunk (He et al., CVPR 2016) from torchvision's BasicBlock / Bottleneck, randomly initialised.

One trunk serves the ResNet, VT-ResNet and FPN models and the hybrid ViT's patch source.
Module names follow torchvision (``conv1``, ``bn1``, ``layer1..4``), so a torchvision state
dict of the same depth and width loads into it. ``small_stem`` swaps the 7x7/2 stem and
max-pool for a 3x3/1 convolution, for 28-32 px images.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


class ResNetTrunk(nn.Module):
    """Stem + the first ``num_stages`` stages; ``channels``/``reductions`` per stage.

    Stage i (0-based) has width ``base_width * 2^i`` (x4 for bottlenecks) and stride
    ``stem * 2^i``, stem = 4 (7x7/2 conv + max-pool) or 1 (small stem).
    """

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> the last stage's map (B, channels[-1], H/r, W/r)."""
        return self.stages(x)[-1]
