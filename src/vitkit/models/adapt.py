"""Pretrained weights -> a model that differs from the one they were saved from.

    other num_classes   the model's own freshly initialised head(s) replace the saved ones
    num_classes = 0     headless: the saved head(s) are removed
    other in_chans      the first convolution adapted by :func:`adapt_input_conv`
    other img_size      E_pos resampled (each family's ``adapt_state_dict``)

Everything else must match exactly (:func:`vitkit.models.hub.check_state_dict`).
:func:`adapt_weights` returns the adapted state dict and an :class:`Adaptation` whose
:meth:`~Adaptation.line` says in one line what was kept, re-initialised, removed, adapted or
resampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A conv weight (O, I, k, k) -> (O, in_chans, k, k) that reads ``in_chans`` channels.

    One channel: the sum over I, so a gray image x gives what the original gives on x repeated
    I times. More channels: the I input slices repeated cyclically and scaled by I / in_chans,
    which keeps the output's scale (and, when in_chans is a multiple of I, gives the original
    output exactly for an image whose channels are equal). This is timm's ``adapt_input_conv``.
    """
    saved = weight.shape[1]
    if in_chans == saved:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / saved)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (saved / in_chans)


@dataclass
class Adaptation:
    """What loading changed: counts and short descriptions, for one report line."""

    kept: int = 0
    reinitialised: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reinitialised or self.removed or self.adapted or self.resampled)

    def line(self, source: str) -> str:
        """``weights from SRC: kept 30 tensors; re-initialised head (5 -> 3 classes); ...``"""
        parts = [f"kept {self.kept} tensors"]
        for label, items in (("re-initialised", self.reinitialised), ("removed", self.removed),
                             ("adapted", self.adapted), ("resampled", self.resampled)):
            if items:
                parts.append(f"{label} {', '.join(items)}")
        return f"weights from {source}: {'; '.join(parts)}"


def _classes(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    weight = tensors.get(f"{prefix}.weight")
    return 0 if weight is None else int(weight.shape[0])


def _other_classes(saved: dict, mine: dict, prefix: str) -> bool:
    """The saved head and the model's differ in their class count and nothing else (or one is absent)."""
    if not saved or not mine:
        return bool(saved or mine)
    ws, wm = saved.get(f"{prefix}.weight"), mine.get(f"{prefix}.weight")
    return ws is not None and wm is not None and ws.shape[0] != wm.shape[0] and ws.shape[1:] == wm.shape[1:]


def _adapt_heads(model, state: dict, own: dict, report: Adaptation) -> dict:
    """A saved classifier for another number of classes (or none) -> the model's own (fresh) head.
    A damaged head (a tensor missing, another width) is left to the strict check."""
    for prefix in model.classifier:
        saved = {k: v for k, v in state.items() if k.startswith(f"{prefix}.")}
        mine = {k: v for k, v in own.items() if k.startswith(f"{prefix}.")}
        if not _other_classes(saved, mine, prefix):
            continue
        state = {**{k: v for k, v in state.items() if k not in saved}, **mine}
        old, new = _classes(saved, prefix), _classes(mine, prefix)
        if not mine:
            report.removed.append(f"{prefix} (headless)")
        else:
            what = f"{old} -> {new} classes" if saved else f"new, {new} classes"
            report.reinitialised.append(f"{prefix} ({what})")
    return state


def _adapt_first_conv(model, state: dict, own: dict, report: Adaptation) -> dict:
    """The first convolution's weight for the model's ``in_chans`` (other dimensions must match)."""
    key = f"{model.first_conv}.weight"
    saved, mine = state.get(key), own.get(key)
    if saved is None or mine is None or saved.ndim != 4 or saved.shape == mine.shape:
        return state
    if saved.shape[0] != mine.shape[0] or saved.shape[2:] != mine.shape[2:]:
        return state  # not a channel change: the strict check names it
    report.adapted.append(f"{model.first_conv} ({saved.shape[1]} -> {mine.shape[1]} input channels)")
    return {**state, key: adapt_input_conv(saved, mine.shape[1]).to(saved.dtype)}


def adapt_weights(model, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Adaptation]:
    """``state`` (vitkit names) adapted to ``model``'s classes, channels and image size."""
    own, saved = model.state_dict(), dict(state)
    report = Adaptation()
    state = model.adapt_state_dict(dict(saved))  # E_pos resampled by the family
    for key, value in state.items():
        if key in saved and value.shape != saved[key].shape:
            report.resampled.append(f"{key} ({saved[key].shape[1]} -> {value.shape[1]} tokens)")
    state = _adapt_first_conv(model, state, own, report)
    state = _adapt_heads(model, state, own, report)
    report.kept = sum(1 for k, v in state.items() if k in own and saved.get(k) is v)  # loaded as saved
    return state, report
