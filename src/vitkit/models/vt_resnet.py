"""VT-ResNet (Wu et al., arXiv 2006.03677; SPEC §3): ResNet whose last stage is replaced by
VT modules operating on the stage-4 input (the stage-3 output, 14x14 x 256 for R18/34 at 224).

    X = ResNet stages 1..3 (x)                          (B, C, H/16, W/16)
    (X, T) = VT module_k (X, T),  k = 1..n (2/3/3/3)     first tokenizer filter-based, then recurrent
    y = FC(mean_L T)                                     head: average over the L tokens

``forward_features`` returns the output tokens T (B, L, C_T). The last module has no
projector: its map would feed nothing in classification (the head reads the tokens).
Stochastic depth (``backbone.drop_path_rate``) ramps linearly over the trunk's residual blocks,
then the VT modules (their transformer and projector branches), which take the top of the ramp.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vitkit.config import image_size
from vitkit.errors import VitkitError
from vitkit.layers.helpers import drop_path_ramp
from vitkit.layers.resnet import num_blocks
from vitkit.layers.vt import VTConfig, vt_stack
from vitkit.models.base import FeatureInfo, Indices, VitkitModel, stage_outputs
from vitkit.models.catalog import register_family, register_presets
from vitkit.models.resnet import (
    LAYOUTS,
    ResNetTrunkConfig,
    nest_trunk_fields,
    new_fc,
    replace_head,
    trunk_feature_info,
    trunk_from,
)

PAPER_MODULES = {18: 2, 34: 3, 50: 3, 101: 3}


@dataclass(frozen=True)
class VTResNetConfig:
    img_size: int | tuple[int, int] = 224  # stored as (H, W)
    in_chans: int = 3
    num_classes: int = 1000
    backbone: ResNetTrunkConfig = field(default_factory=ResNetTrunkConfig)  # its stages 1-3 are used
    num_modules: int | None = None  # None = the paper's 2/3/3/3 for R18/34/50/101
    global_pool: Literal["avg", ""] = "avg"  # "": no pooling, the FC reads every token
    vt: VTConfig = field(default_factory=VTConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", image_size(self.img_size))

    @classmethod
    def migrate(cls, data: dict) -> dict:
        return nest_trunk_fields(data)

    def validate(self) -> None:
        self.backbone.validate()
        if self.num_modules is not None and self.num_modules < 1:
            raise VitkitError(f"num_modules must be >= 1, got {self.num_modules}")
        if self.num_classes < 0:
            raise VitkitError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.in_chans < 1:
            raise VitkitError(f"in_chans must be >= 1, got {self.in_chans}")


@register_family
class VTResNet(VitkitModel):
    family = "vt_resnet"
    config_cls = VTResNetConfig
    classifier = ("fc",)

    def __init__(self, config: VTResNetConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        n = c.num_modules or PAPER_MODULES[c.backbone.depth]
        self.trunk = trunk_from(c.backbone, c.in_chans, num_stages=3, extra_units=n)
        channels = self.trunk.channels[-1]
        c.vt.validate(channels)
        rates = drop_path_ramp(c.backbone.drop_path_rate, num_blocks(c.backbone.depth, 3) + n)[-n:]
        self.vt = vt_stack(channels, c.vt, n, last_projector=False, drop_path=rates)
        self.num_features = c.vt.token_channels or channels
        self.fc = new_fc(self.num_features, c.num_classes)
        self.feature_info = trunk_feature_info(self.trunk, "trunk")
        self.feature_info.append(FeatureInfo(channels, self.trunk.reductions[-1], "vt"))  # the VT output map

    def _stages(self, x: torch.Tensor, upto: int = 3) -> list[torch.Tensor]:
        self.check_input(x, min_size=self.trunk.reductions[-1])
        return self.trunk.stages(x, upto)

    def forward_vt(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (VT output map (B, C, H/16, W/16), tokens (B, L, C_T))."""
        if self.vt is None:
            raise VitkitError("this VT-ResNet was pruned to its ResNet stages; use forward_intermediates")
        return self.vt(self._stages(x)[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> visual tokens T (B, L, C_T) of the last VT module."""
        return self.forward_vt(x)[1]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, L, C_T) -> logits (B, K), or per token (B, L, K) with global_pool=""."""
        pooled = feats.mean(dim=1) if self.config.global_pool == "avg" else feats  # (B, C_T): token average
        return pooled if pre_logits else self.fc(pooled)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.config = replace_head(self.config, num_classes, global_pool)
        self.fc = new_fc(self.num_features, num_classes)

    def layer_id(self, name: str) -> int:
        """0 = stem, 1..3 = ResNet stages, then one per VT module, head last."""
        if name.startswith("trunk."):
            return self.trunk.layer_id(name[len("trunk."):])
        if name.startswith("vt."):
            return self.trunk.num_stages + 1 + int(name.split(".")[1])
        return self.trunk.num_stages + 1 + (len(self.vt) if self.vt is not None else 0)

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """Stage 1-3 outputs (indices 0-2) and the VT output map (index 3), NCHW (see
        :meth:`VitkitModel.forward_intermediates`). The final feature is ``forward_features``'s tokens
        (B, L, C_T); the last stage's map if the VT modules did not run (``stop_early``, or pruned)."""
        self.check_output_fmt(output_fmt)
        take = self.take_indices(indices)
        stop = take[-1] + 1 if stop_early or intermediates_only else len(self.feature_info)
        maps = self._stages(x, min(stop, 3))
        if stop < 4:
            return stage_outputs(maps, take, intermediates_only)
        vt_map, tokens = self.vt(maps[-1])
        out = stage_outputs(maps + [vt_map], take, intermediates_only)
        return out if intermediates_only else (tokens, out[1])

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem output and stage 1-3 maps (NCHW), then each VT module's tokens (B, L, C_T)."""
        self.check_input(x, min_size=self.trunk.reductions[-1])
        states = self.trunk.states(x)
        return states + ([t for _, t in self.vt.states(states[-1])] if self.vt is not None else [])

    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the layers 0..max(indices) (index 3: the VT modules); ``prune_head`` drops the FC."""
        take = self.take_indices(indices)
        keep = take[-1] + 1
        self.check_head_kept(not prune_head and keep < 4, "the VT modules' tokens")
        if keep < 4:
            self.vt = None
            self.trunk.truncate(keep)
        self.feature_info = self.feature_info[:keep]
        if prune_head:
            self.fc = nn.Identity()
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ResNet stage's and each VT module's activations in the backward pass."""
        self.grad_checkpointing = self.trunk.grad_checkpointing = enable
        if self.vt is not None:
            self.vt.grad_checkpointing = enable


def _presets() -> tuple[dict, dict, dict]:
    paper = {f"vt_resnet{d}": VTResNetConfig(backbone=ResNetTrunkConfig(depth=d)) for d in LAYOUTS}
    seed = VTConfig(transformer="seed", pos_encoding=True, tokenizer_value=True, projector_value=True)
    paper["vt_resnet18_seed"] = VTResNetConfig(vt=seed)
    r18_small, r34_small = ResNetTrunkConfig(small_stem=True), ResNetTrunkConfig(depth=34, small_stem=True)
    small = {
        "vt_resnet18_28": VTResNetConfig(img_size=28, in_chans=1, num_classes=10, backbone=r18_small),
        "vt_resnet18_32": VTResNetConfig(img_size=32, in_chans=3, num_classes=10, backbone=r18_small),
        "vt_resnet34_32": VTResNetConfig(img_size=32, in_chans=3, num_classes=10, backbone=r34_small),
    }
    tiny = dict(num_classes=5, backbone=ResNetTrunkConfig(base_width=8))
    test = {
        "vt_resnet_test": VTResNetConfig(img_size=32, **tiny, vt=VTConfig(num_tokens=4, num_heads=2)),
        "vt_resnet_test_small": VTResNetConfig(img_size=16, in_chans=1, num_classes=5,
                                               backbone=ResNetTrunkConfig(base_width=8, small_stem=True),
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
