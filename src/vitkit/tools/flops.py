"""The FLOP counter: parameters and FLOPs of a model, whole and one part (the neck or the VT
modules), and the FLOPs of any step (``vitkit bench``).

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (:func:`flops_of`); a model is measured
on one image (batch 1, eval mode). That counter counts a multiply-add as 2 FLOPs and only matrix
products and convolutions (not normalisation, activations, softmax or pooling). Papers (ResNet,
VT) report multiply-adds under the name "FLOPs": compare their figures with ``macs`` = flops / 2.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitkit.errors import VitkitError
from vitkit.registry import create_model

PART_CANDIDATES = ("neck", "vt", "trunk.layer4")  # first one the model has is measured by default


class FlopCounts(NamedTuple):
    total: int  # 2 per multiply-add
    by_module: dict[str, dict]  # "Model.sub.module" -> {aten op: FLOPs}, as FlopCounterMode reports them


def flops_of(fn: Callable[[], object]) -> FlopCounts:
    """FLOPs of the matmuls / convolutions / attention that ``fn()`` runs (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return FlopCounts(counter.get_total_flops(), counter.get_flop_counts())


@dataclass(frozen=True)
class FlopReport:
    model: str
    input_shape: tuple[int, ...]
    params: int
    flops: int  # FLOP counter: 2 per multiply-add
    part: str | None = None
    part_params: int = 0
    part_flops: int = 0

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def part_macs(self) -> int:
        return self.part_flops // 2


def default_part(model: nn.Module) -> str | None:
    """The submodule measured separately: ``neck`` (segmentation), ``vt`` (VT-ResNet), ``trunk.layer4``."""
    names = dict(model.named_modules())
    return next((p for p in PART_CANDIDATES if p in names), None)


def _part_flops(counts: dict, root: str, part: str) -> int:
    key = f"{root}.{part}"
    if key in counts:
        return sum(counts[key].values())
    children = [k for k in counts if k.startswith(key + ".") and "." not in k[len(key) + 1:]]
    return sum(sum(counts[k].values()) for k in children)  # e.g. a ModuleList never called itself


def count_flops(model: nn.Module, img_size: int | tuple[int, int], part: str | None = "auto",
                name: str | None = None) -> FlopReport:
    """Measure ``model`` on a (1, in_chans, H, W) zero image; ``part`` = submodule name, "auto" or None."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    if h < 1 or w < 1:
        raise VitkitError(f"image size must be a positive integer, got {img_size}")
    part = default_part(model) if part == "auto" else part
    modules = dict(model.named_modules())
    if part is not None and part not in modules:
        raise VitkitError(f"{type(model).__name__} has no submodule '{part}'; try one of "
                          f"{', '.join(n for n in PART_CANDIDATES if n in modules) or 'the names in print(model)'}")
    x = torch.zeros(1, getattr(model.config, "in_chans", 3), h, w)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total, by_module = flops_of(lambda: model(x))
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    report = FlopReport(name or type(model).__name__, tuple(x.shape), params, total)
    if part is None:
        return report
    part_flops = _part_flops(by_module, type(model).__name__, part)
    part_params = sum(p.numel() for p in modules[part].parameters())
    return FlopReport(report.model, report.input_shape, params, total, part, part_params, part_flops)


def measure(spec: str, img_size: int | None = None, part: str | None = "auto",
            overrides: dict | None = None) -> FlopReport:
    """Build ``spec`` (registered name or saved dir, config ``overrides``) at ``img_size``; count FLOPs."""
    if img_size is not None and img_size < 1:
        raise VitkitError(f"--img-size must be a positive integer, got {img_size}")
    overrides = dict(overrides or {}, **({"img_size": img_size} if img_size is not None else {}))
    model = create_model(spec, **overrides)
    size = img_size if img_size is not None else model.config.img_size
    return count_flops(model, size, part, name=str(spec))


def format_report(r: FlopReport) -> str:
    """Human-readable lines; GFLOPs (counter) and GMACs (what papers call FLOPs)."""
    lines = [
        f"model   {r.model}  input {'x'.join(map(str, r.input_shape))}",
        f"params  {r.params / 1e6:.2f} M",
        f"total   {r.flops / 1e9:.3f} GFLOPs = {r.macs / 1e9:.3f} GMACs (paper 'FLOPs')",
    ]
    if r.part:
        share = r.part_flops / r.flops if r.flops else 0.0
        lines.append(f"{r.part:<7} {r.part_flops / 1e9:.3f} GFLOPs = {r.part_macs / 1e9:.3f} GMACs "
                     f"({share:.1%} of total), {r.part_params / 1e6:.2f} M params")
    lines.append("(FLOP counter: 1 multiply-add = 2 FLOPs; only matmuls and convolutions are counted)")
    return "\n".join(lines)
