"""Small shared helpers for layers: pairs, the stochastic-depth ramp, gradient checkpointing, temporary flags."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def to_2tuple(x) -> tuple[int, int]:
    """7 -> (7, 7); (7, 5) -> (7, 5)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected one int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def drop_path_ramp(rate: float, n: int) -> list[float]:
    """Stochastic-depth rates of ``n`` residual blocks (Huang et al. 2016): linear from 0 at the
    first block to ``rate`` at the last."""
    return [rate * i / max(n - 1, 1) for i in range(n)]


@contextmanager
def attributes_set(modules: list[nn.Module], name: str, value):
    """Set attribute ``name`` of every module to ``value`` for the duration; each module's own value is
    restored on exit."""
    before = [getattr(m, name) for m in modules]
    try:
        for m in modules:
            setattr(m, name, value)
        yield modules
    finally:
        for m, old in zip(modules, before, strict=True):
            setattr(m, name, old)


@contextmanager
def _batchnorm_stats_kept(module: nn.Module):
    """Restore the BatchNorm running statistics (and batch counts) of ``module`` on exit."""
    bufs = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
    saved = [b.clone() for b in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in zip(bufs, saved, strict=True):
                b.copy_(v)


def maybe_checkpoint(module: nn.Module, *args, enable: bool):
    """``module(*args)``; with ``enable`` (while training with gradients) its activations are not
    kept but recomputed in the backward pass (gradient checkpointing, Chen et al. 2016). The
    recomputation leaves BatchNorm running statistics as the forward pass left them."""
    if not (enable and module.training and torch.is_grad_enabled()):
        return module(*args)
    return checkpoint(module, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _batchnorm_stats_kept(module)))
