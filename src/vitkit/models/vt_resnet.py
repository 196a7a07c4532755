"""VT-ResNet (Wu et al., arXiv 2006.03677; SPEC §3): ResNet whose last stage is replaced by
VT modules operating on the stage-4 input (the stage-3 output, 14x14 x 256 for R18/34 at 224).

    X = ResNet stages 1..3 (x)                          (B, C, H/16, W/16)
    (X, T) = VT module_k (X, T),  k = 1..n (2/3/3/3)     first tokenizer filter-based, then recurrent
    y = FC(mean_L T)                                     head: average over the L tokens

``forward_features`` returns the output tokens T (B, L, C_T). The last module has no
projector: its map would feed nothing in classification (the head reads the tokens).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.layers.vt import VTConfig, vt_stack
from vitkit.models.base import FeatureInfo, VitkitModel
from vitkit.models.catalog import register_family, register_presets
from vitkit.models.resnet import LAYOUTS, trunk_from

PAPER_MODULES = {18: 2, 34: 3, 50: 3, 101: 3}


@dataclass(frozen=True)
class VTResNetConfig:
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    depth: Literal[18, 34, 50, 101] = 18
    base_width: int = 64
    small_stem: bool = False  # 3x3 stride-1 stem without max-pool (28-32 px images)
    num_modules: int | None = None  # None = the paper's 2/3/3/3 for R18/34/50/101
    vt: VTConfig = field(default_factory=VTConfig)

    def validate(self) -> None:
        if self.depth not in LAYOUTS:
            raise VitkitError(f"unknown ResNet depth {self.depth}; choose one of {', '.join(map(str, LAYOUTS))}")
        if self.num_modules is not None and self.num_modules < 1:
            raise VitkitError(f"num_modules must be >= 1, got {self.num_modules}")
        if self.num_classes < 0:
            raise VitkitError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.in_chans < 1 or self.base_width < 1:
            raise VitkitError("in_chans and base_width must be >= 1")


@register_family
class VTResNet(VitkitModel):
    family = "vt_resnet"
    config_cls = VTResNetConfig

    def __init__(self, config: VTResNetConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.trunk = trunk_from(c, num_stages=3)
        channels = self.trunk.channels[-1]
        c.vt.validate(channels)
        n = c.num_modules or PAPER_MODULES[c.depth]
        self.vt = vt_stack(channels, c.vt, n, last_projector=False)
        self.num_features = c.vt.token_channels or channels
        self.fc = nn.Linear(self.num_features, c.num_classes) if c.num_classes else nn.Identity()
        self.feature_info = [FeatureInfo(ch, r)
                             for ch, r in zip(self.trunk.channels, self.trunk.reductions, strict=True)]
        self.feature_info.append(FeatureInfo(channels, self.trunk.reductions[-1]))  # the VT output map

    def _stages(self, x: torch.Tensor, upto: int = 3) -> list[torch.Tensor]:
        self.check_input(x, min_size=self.trunk.reductions[-1])
        return self.trunk.stages(x, upto)

    def forward_vt(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (VT output map (B, C, H/16, W/16), tokens (B, L, C_T))."""
        return self.vt(self._stages(x)[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> visual tokens T (B, L, C_T) of the last VT module."""
        return self.forward_vt(x)[1]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = feats.mean(dim=1)  # (B, C_T): average over the tokens
        return pooled if pre_logits else self.fc(pooled)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | int | None = None):
        """Stage 1-3 outputs (indices 0-2) and the VT output map (index 3), NCHW."""
        take = self.resolve_indices(indices, 4)
        outs = self._stages(x, min(max(take) + 1, 3))
        if 3 in take:
            outs.append(self.vt(outs[-1])[0])
        return [outs[i] for i in take]


def _presets() -> tuple[dict, dict, dict]:
    paper = {f"vt_resnet{d}": VTResNetConfig(depth=d) for d in LAYOUTS}
    seed = VTConfig(transformer="seed", pos_encoding=True, tokenizer_value=True, projector_value=True)
    paper["vt_resnet18_seed"] = VTResNetConfig(vt=seed)
    small = {
        "vt_resnet18_28": VTResNetConfig(img_size=28, in_chans=1, num_classes=10, small_stem=True),
        "vt_resnet18_32": VTResNetConfig(img_size=32, in_chans=3, num_classes=10, small_stem=True),
        "vt_resnet34_32": VTResNetConfig(img_size=32, in_chans=3, num_classes=10, depth=34, small_stem=True),
    }
    tiny = dict(num_classes=5, base_width=8)
    test = {
        "vt_resnet_test": VTResNetConfig(img_size=32, **tiny, vt=VTConfig(num_tokens=4, num_heads=2)),
        "vt_resnet_test_small": VTResNetConfig(img_size=16, in_chans=1, small_stem=True, **tiny,
                                               vt=VTConfig(num_tokens=4)),
        "vt_resnet_test_seed": VTResNetConfig(img_size=64, **tiny, num_modules=3,
                                              vt=VTConfig(num_tokens=4, transformer="seed", pos_encoding=True,
                                                          pos_grid=3, pos_channels=4, token_channels=16,
                                                          tokenizer_value=True, projector_value=True)),
        "vt_resnet_test_ablation": VTResNetConfig(img_size=32, **tiny,
                                                  vt=VTConfig(num_tokens=4, tokenizer="pooling", transformer="none")),
    }
    return paper, small, test


_PAPER, _SMALL, _TEST = _presets()
register_presets(VTResNet, _PAPER, tags=("vt",))
register_presets(VTResNet, _SMALL, tags=("vt", "small"))
register_presets(VTResNet, _TEST, tags=("vt", "test"))
