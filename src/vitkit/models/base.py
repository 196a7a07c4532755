"""The backbone contract every vitkit model follows (ViT and VT families alike).

    forward(x)                       = forward_head(forward_features(x))
    forward_features(x)              -> the backbone's features (tokens or a feature map)
    forward_head(feats, pre_logits)  -> logits (B, num_classes), or pooled (B, num_features)
    forward_intermediates(x, ...)    -> (final features, [layer outputs]) as in timm: NCHW maps
                                        (or NLC tokens) of the layers ``feature_info`` lists
    feature_info                     -> channels, stride and module name of each of those layers
    hidden_states(x)                 -> every layer's output, the embedding (stem) output first
    prune_intermediate_layers(idx)   -> drop the layers after the last one asked for, and the head
    set_grad_checkpointing(enable)   -> recompute the layers' activations in the backward pass
    reset_classifier(k, global_pool) -> new head(s) for k classes (classifiers)

Every config has ``img_size``, ``in_chans`` and ``num_classes``; the model keeps it as
``model.config`` so that ``save_pretrained`` writes a self-describing directory, together
with what the model carries about its inputs and outputs:

    preprocess                       -> Preprocess (size, channels, mean/std, interpolation, crop)
    class_names                      -> names of the outputs, or None
    task                             -> "classification" or "segmentation"

Input checks are plain functions that ``torch.fx`` records as calls (``torch.fx.wrap``): a traced
model keeps them, and they run on the real shapes when the traced graph runs.

For fine-tuning, each model also declares ``classifier`` (its head modules),
``no_weight_decay()`` (parameter names trained without weight decay) and ``layer_id(name)``
(the depth used by layer-wise learning-rate decay: 0 = embedding, the largest = the head).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx
from torch import nn

from vitkit.errors import VitkitError
from vitkit.models import hub
from vitkit.preprocess import Preprocess

OUTPUT_FORMATS = ("NCHW", "NLC")
Indices = Sequence[int] | int | None


@dataclass(frozen=True)
class FeatureInfo:
    """One intermediate output: its channel count, its stride w.r.t. the input, and the name of
    the submodule that produces it (``model.get_submodule(module)``)."""

    channels: int
    reduction: int
    module: str = ""


class FeatureInfoList(list):
    """``model.feature_info``: a list of :class:`FeatureInfo` that also answers timm's questions.

    ``channels()``, ``reduction()`` and ``module_name()`` give the value of every entry, or of
    the entry (or entries) at ``idx``; slicing gives a FeatureInfoList.
    """

    def channels(self, idx: Indices = None):
        return self._field("channels", idx)

    def reduction(self, idx: Indices = None):
        return self._field("reduction", idx)

    def module_name(self, idx: Indices = None):
        return self._field("module", idx)

    def _field(self, name: str, idx: Indices):
        if isinstance(idx, int):
            return getattr(self[idx], name)
        return [getattr(self[i], name) for i in (range(len(self)) if idx is None else idx)]

    def __getitem__(self, idx):
        out = super().__getitem__(idx)
        return FeatureInfoList(out) if isinstance(idx, slice) else out


def check_image(x: torch.Tensor, in_chans: int, min_size: int, who: str) -> None:
    """Raise a clear error for a wrongly shaped batch (instead of a deep torch error)."""
    if x.ndim != 4:
        raise VitkitError(f"{who} expects a batch of images (B, C, H, W); got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise VitkitError(f"{who} was built for {in_chans}-channel images but got {x.shape[1]} channels; "
                          f"convert the images or build the model with in_chans={x.shape[1]}")
    if min(x.shape[-2:]) < min_size:
        raise VitkitError(f"image size {tuple(x.shape[-2:])} is too small for {who}: it needs at least "
                          f"{min_size}x{min_size} pixels")


torch.fx.wrap("check_image")  # traced as one call: the check runs on the real input shape


def take_indices(indices: Indices, n: int) -> list[int]:
    """timm's convention for ``indices`` over ``n`` layers: None = all, an int k = the last k, a
    sequence = those layers (negative = from the end). Returns sorted absolute indices."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 1 <= indices <= n:
            raise VitkitError(f"indices={indices} asks for the last {indices} layers, but there are {n}")
        return list(range(n - indices, n))
    out = set()
    for i in indices:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise VitkitError(f"intermediate index {i} out of range for {n} layers (0..{n - 1} or -{n}..-1)")
        out.add(j)
    if not out:
        raise VitkitError("indices is empty; pass None (all layers), an int (the last k) or a list of layers")
    return sorted(out)


class VitkitModel(nn.Module):
    family: ClassVar[str] = ""
    config_cls: ClassVar[type]
    task: ClassVar[str] = "classification"
    classifier: ClassVar[tuple[str, ...]] = ()  # the head modules: replaced when num_classes changes
    config: Any
    feature_info: FeatureInfoList
    token_layers: ClassVar[bool] = False  # feature_info layers make tokens (output_fmt="NLC" possible)
    num_features: int
    grad_checkpointing: bool = False
    class_names: list[str] | None = None
    adaptation: Any = None  # what loading pretrained weights changed (vitkit.models.adapt.Adaptation)
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
        check_image(x, self.in_chans, min_size, type(self).__name__)

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, feats, pre_logits: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the outputs of the ``feature_info`` layers at ``indices``
        (None = all, k = the last k, negative = from the end), in layer order.

        ``output_fmt``: "NCHW" maps, or "NLC" tokens (B, N, C) where the layers make tokens.
        ``norm``: apply the final norm to each (models without one ignore it).
        ``return_prefix_tokens``: each output is a pair (patch part, prefix tokens (B, P, C)).
        ``stop_early``: run no layer after the last one asked for.
        Returns ``(final features, intermediates)``, or the list alone with ``intermediates_only``.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output for probing (transformers' ``output_hidden_states``), the embedding
        output first: tokens (B, L, C) from token layers, maps (B, C, H, W) from conv stages."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the final norm / the head if asked).
        Returns the absolute indices kept, for ``forward_intermediates``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def take_indices(self, indices: Indices) -> list[int]:
        """``indices`` as sorted absolute positions in ``feature_info`` (see :func:`take_indices`)."""
        return take_indices(indices, len(self.feature_info))

    def stage_intermediates(self, x: torch.Tensor, indices: Indices, output_fmt: str, stop_early: bool,
                            intermediates_only: bool):
        """:meth:`forward_intermediates` of a CNN whose ``_stages(x, n)`` returns its first n stage
        maps (all when n is None), NCHW; the final feature is the last computed map."""
        self.check_output_fmt(output_fmt)
        take = self.take_indices(indices)
        maps = self._stages(x, take[-1] + 1 if stop_early or intermediates_only else None)
        return stage_outputs(maps, take, intermediates_only)

    def check_output_fmt(self, output_fmt: str) -> None:
        if output_fmt not in OUTPUT_FORMATS:
            raise VitkitError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if output_fmt == "NLC" and not self.token_layers:
            raise VitkitError(f"{type(self).__name__}'s intermediate layers make feature maps, not tokens: use "
                              "output_fmt='NCHW' ('NLC' is for token layers, e.g. the ViT's blocks)")

    def check_head_kept(self, needed: bool, what: str) -> None:
        """``prune_head=False`` is refused when pruning removes a layer the head reads."""
        if needed:
            raise VitkitError(f"{type(self).__name__}'s head reads {what}; prune with prune_head=True "
                              "or keep that layer in indices")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass to save memory."""
        raise VitkitError(f"{type(self).__name__} does not support gradient checkpointing")

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters trained without weight decay: biases, norm scales and other
        1-D parameters (LayerScale); families add their tokens and E_pos."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    def layer_id(self, name: str) -> int:  # pragma: no cover - abstract
        """Depth of parameter ``name`` for layer-wise lr decay: 0 = input embedding ... last = head."""
        raise NotImplementedError

    def layer_ids(self) -> dict[str, int]:
        """:meth:`layer_id` of every parameter; the largest is the head's (``num_layers``)."""
        return {name: self.layer_id(name) for name, _ in self.named_parameters()}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New, freshly initialised head(s) for ``num_classes`` (0: headless). ``global_pool``
        changes the pooling ("" keeps every token / position), None keeps it."""
        raise VitkitError(f"{type(self).__name__} is a {self.task} model, not a classifier; "
                          "build it with num_classes=... instead")

    @property
    def first_conv(self) -> str:
        """Name of the convolution that reads the image channels (adapted for another ``in_chans``)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and module.in_channels == self.in_chans:
                return name
        raise VitkitError(f"{type(self).__name__} has no convolution reading the {self.in_chans} input channels")

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook: adapt loaded weights to this model (e.g. resample positional embeddings). By
        default each sub-model (a ViT-Seg's ViT backbone) adapts its own part."""
        for name, child in self.named_children():
            if isinstance(child, VitkitModel):
                prefix = f"{name}."
                part = child.adapt_state_dict({k[len(prefix):]: v for k, v in state_dict.items()
                                               if k.startswith(prefix)})
                state_dict = {**{k: v for k, v in state_dict.items() if not k.startswith(prefix)},
                              **{prefix + k: v for k, v in part.items()}}
        return state_dict

    def save_pretrained(self, path, extra: dict | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` (config, preprocess, class names, task;
        ``extra`` entries are added, or replace those)."""
        hub.save_pretrained(self, path, extra)


def stage_outputs(maps: list[torch.Tensor], take: list[int], intermediates_only: bool):
    """forward_intermediates' result from the computed stage maps (the last one is the final feature)."""
    inter = [m for i, m in enumerate(maps) if i in take]
    return inter if intermediates_only else (maps[-1], inter)
