"""ResNet trunk (He et al., CVPR 2016) from torchvision's BasicBlock / Bottleneck, randomly initialised.

One trunk serves the ResNet, VT-ResNet and FPN models and the hybrid ViT's patch source.
Module names follow torchvision (``conv1``, ``bn1``, ``layer1..4``), so a torchvision state
dict of the same depth and width loads into it. ``small_stem`` swaps the 7x7/2 stem and
max-pool for a 3x3/1 convolution, for 28-32 px images.

Each residual block may drop its residual branch (stochastic depth, Huang et al. 2016):
    y = ReLU(DropPath_p(F(x)) + shortcut(x))
with p = 0 (the default) this is torchvision's block, bit for bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vitkit.layers.block import DropPath
from vitkit.layers.helpers import maybe_checkpoint


class _DropPathResidual:
    """y = ReLU(DropPath_p(branch(x)) + shortcut(x)) for a torchvision block (same modules and
    state-dict keys); the subclass gives ``branch``, its residual branch up to the last BatchNorm."""

    def __init__(self, *args, drop_path: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.drop_path(self.branch(x)) + shortcut)


class DropPathBasicBlock(_DropPathResidual, BasicBlock):
    """torchvision's BasicBlock with drop-path on the residual branch."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class DropPathBottleneck(_DropPathResidual, Bottleneck):
    """torchvision's Bottleneck with drop-path on the residual branch."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}
_WITH_DROP_PATH = {BasicBlock: DropPathBasicBlock, Bottleneck: DropPathBottleneck}


def num_blocks(depth: int, num_stages: int = 4) -> int:
    """Residual blocks in the first ``num_stages`` stages of a ResNet-``depth``."""
    return sum(LAYOUTS[depth][1][:num_stages])


class ResNetTrunk(nn.Module):
    """Stem + the first ``num_stages`` stages; ``channels``/``reductions`` per stage.

    Stage i (0-based) has width ``base_width * 2^i`` (x4 for bottlenecks) and stride
    ``stem * 2^i``, stem = 4 (7x7/2 conv + max-pool) or 1 (small stem). ``drop_path``: one
    stochastic-depth rate per residual block (default: none dropped). With ``grad_checkpointing``
    set, each stage is recomputed in the backward pass.
    """

    def __init__(self, depth: int, in_chans: int, base_width: int = 64, small_stem: bool = False,
                 num_stages: int = 4, drop_path: Sequence[float] = ()):
        super().__init__()
        block, layers = LAYOUTS[depth]
        block = _WITH_DROP_PATH[block]
        rates = list(drop_path) or [0.0] * num_blocks(depth, num_stages)
        if len(rates) != num_blocks(depth, num_stages):
            raise ValueError(f"drop_path needs {num_blocks(depth, num_stages)} rates, got {len(rates)}")
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
        self.grad_checkpointing = False
        for i in range(num_stages):
            stage_rates, rates = rates[:layers[i]], rates[layers[i]:]
            setattr(self, f"layer{i + 1}", self._make_layer(block, w * 2**i, stage_rates, 1 if i == 0 else 2))
        stem = 1 if small_stem else 4
        self.channels = [w * 2**i * block.expansion for i in range(num_stages)]
        self.reductions = [stem * 2**i for i in range(num_stages)]
        self._init()

    def _make_layer(self, block, planes: int, rates: list[float], stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        out = [block(self.inplanes, planes, stride, down, drop_path=rates[0])]
        self.inplanes = planes * block.expansion
        out += [block(self.inplanes, planes, drop_path=p) for p in rates[1:]]
        return nn.Sequential(*out)

    def _init(self) -> None:
        """torchvision's ResNet initialisation (Kaiming-normal fan-out convolutions, unit BN)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def layer_id(self, name: str) -> int:
        """Depth of a trunk parameter (name relative to the trunk): 0 = stem, k = stage ``layer{k}``."""
        first = name.split(".", 1)[0]
        return int(first[len("layer"):]) if first.startswith("layer") else 0

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, base_width, H/s, W/s), s = 4 (or 1 with the small stem)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def states(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """The stem output, then the outputs of stages 1..``upto`` (default: all)."""
        outs = [self.stem(x)]
        for i in range(upto or self.num_stages):
            outs.append(maybe_checkpoint(getattr(self, f"layer{i + 1}"), outs[-1], enable=self.grad_checkpointing))
        return outs

    def stages(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages 1..``upto`` (default: all), each (B, C_i, H/r_i, W/r_i)."""
        return self.states(x, upto)[1:]

    def truncate(self, num_stages: int) -> None:
        """Keep the stem and the first ``num_stages`` stages (drop the later ones)."""
        for i in range(num_stages, self.num_stages):
            delattr(self, f"layer{i + 1}")
        self.num_stages = num_stages
        self.channels, self.reductions = self.channels[:num_stages], self.reductions[:num_stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> the last stage's map (B, channels[-1], H/r, W/r)."""
        return self.stages(x)[-1]
