"""The backbone contract every vitkit model follows (ViT and VT families alike).

    forward(x)                       = forward_head(forward_features(x))
    forward_features(x)              -> the backbone's features (tokens or a feature map)
    forward_head(feats, pre_logits)  -> logits (B, num_classes), or pooled (B, num_features)
    forward_intermediates(x, idx)    -> list of NCHW maps, for dense heads
    feature_info                     -> channels and stride of each intermediate

Every config has ``img_size``, ``in_chans`` and ``num_classes``; the model keeps it as
``model.config`` so that ``save_pretrained`` writes a self-describing directory, together
with what the model carries about its inputs and outputs:

    preprocess                       -> Preprocess (size, channels, mean/std, interpolation, crop)
    class_names                      -> names of the outputs, or None
    task                             -> "classification" or "segmentation"
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.models import hub
from vitkit.preprocess import Preprocess


@dataclass(frozen=True)
class FeatureInfo:
    """One intermediate output: its channel count and its stride w.r.t. the input."""

    channels: int
    reduction: int


class VitkitModel(nn.Module):
    family: ClassVar[str] = ""
    config_cls: ClassVar[type]
    task: ClassVar[str] = "classification"
    config: Any
    feature_info: list[FeatureInfo]
    num_features: int
    grad_checkpointing: bool = False
    class_names: list[str] | None = None
    _preprocess: Preprocess | None = None

    @property
    def preprocess(self) -> Preprocess:
        """How inputs are prepared: set by training or loading; else the config's size, mean = std = 0.5."""
        return self._preprocess if self._preprocess is not None else Preprocess.for_config(self.config)

    @preprocess.setter
    def preprocess(self, value: Preprocess) -> None:
        self._preprocess = value

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    def check_input(self, x: torch.Tensor, min_size: int = 1) -> None:
        """Raise a clear error for a wrongly shaped batch (instead of a deep torch error)."""
        if x.ndim != 4:
            raise VitkitError(
                f"{type(self).__name__} expects a batch of images (B, C, H, W); got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise VitkitError(
                f"{type(self).__name__} was built for {self.in_chans}-channel images but got "
                f"{x.shape[1]} channels; convert the images or build the model with in_chans={x.shape[1]}"
            )
        if min(x.shape[-2:]) < min_size:
            raise VitkitError(
                f"image size {tuple(x.shape[-2:])} is too small for {type(self).__name__}: "
                f"it needs at least {min_size}x{min_size} pixels"
            )

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, feats, pre_logits: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None):
        raise NotImplementedError  # pragma: no cover - abstract

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass to save memory (where supported)."""
        self.grad_checkpointing = enable

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook: adapt loaded weights to this model (e.g. resample positional embeddings)."""
        return state_dict

    def save_pretrained(self, path, extra: dict | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` (config, preprocess, class names, task;
        ``extra`` entries are added, or replace those)."""
        hub.save_pretrained(self, path, extra)

    def resolve_indices(self, indices: Sequence[int] | int | None, n: int) -> list[int]:
        """Normalise ``indices`` (None = last, int k = last k, negatives allowed) to 0..n-1."""
        if indices is None:
            indices = [n - 1]
        elif isinstance(indices, int):
            indices = list(range(n - indices, n))
        out = []
        for i in indices:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise VitkitError(f"intermediate index {i} out of range for {n} stages/blocks")
            out.append(j)
        return out
