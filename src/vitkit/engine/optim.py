"""Optimizer, learning-rate schedule and EMA of weights."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from vitkit.errors import VitkitError


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The model's own declaration (``no_weight_decay()``), else every parameter with ndim <= 1."""
    declare = getattr(model, "no_weight_decay", None)
    if declare is not None:
        return set(declare())
    return {name for name, p in model.named_parameters() if p.ndim <= 1}


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Layer-wise lr decay (BEiT, Bao et al. 2022): scale = decay^(L - layer_id), L = the head's id."""
    ids = model.layer_ids()
    num_layers = max(ids.values())
    return {name: decay ** (num_layers - i) for name, i in ids.items()}


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 layer_decay: float | None = None) -> list[dict]:
    """Trainable parameters grouped by weight decay (none for the model's ``no_weight_decay()``)
    and, with ``layer_decay``, by learning rate ``lr * layer_decay^(L - layer_id)``."""
    skip = no_weight_decay_names(model)
    scales = layer_scales(model, layer_decay) if layer_decay is not None else {}
    groups: dict[tuple[bool, float], dict] = {}
    if not scales:  # the two plain groups, always in this order
        groups = {(False, 1.0): {"params": [], "weight_decay": weight_decay},
                  (True, 1.0): {"params": [], "weight_decay": 0.0}}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = scales.get(name, 1.0)
        key = (name in skip, scale)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if key[0] else weight_decay, "lr_scale": scale}
            if lr is not None:
                groups[key]["lr"] = lr * scale
        groups[key]["params"].append(p)
    return list(groups.values())


IMPL_KWARGS = {"auto": {}, "fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def impl_kwargs(impl: str) -> dict:
    """The keyword arguments of a torch optimizer choosing its update kernel: ``fused`` (one kernel
    for all parameters), ``foreach`` (batched tensor ops), ``for-loop`` (one parameter at a time),
    ``auto`` (torch's default for the device)."""
    if impl not in IMPL_KWARGS:
        raise VitkitError(f"unknown optimizer implementation '{impl}'; choose one of {', '.join(IMPL_KWARGS)}")
    return dict(IMPL_KWARGS[impl])


def make_optimizer(cls, params, impl: str = "auto", **kwargs) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)`` with the ``impl`` kernel; one the parameters' device or dtype does
    not support is a VitkitError."""
    try:
        return cls(params, **kwargs, **impl_kwargs(impl))
    except (RuntimeError, ValueError) as exc:
        if impl == "auto":
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VitkitError(f"{cls.__name__} impl '{impl}' cannot run here ({first}); "
                          "choose another implementation (auto, foreach or for-loop)") from None


def build_optimizer(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, 2019), optionally with layer-wise lr decay (``optim.layer_decay``);
    ``optim.impl`` picks the kernel (the same update in every case)."""
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.lr, optim_cfg.layer_decay)
    return make_optimizer(torch.optim.AdamW, groups, optim_cfg.impl, lr=optim_cfg.lr,
                          betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """lr factor: linear warm-up to 1 over ``warmup`` steps, then cosine to ``min_ratio`` (SGDR)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_progress(progress: float, warmup: float, min_ratio: float) -> float:
    """lr factor at ``progress`` in [0, 1] of the run: linear warm-up from 0 over the first ``warmup``
    fraction, then cosine to ``min_ratio`` (the time-budget form of :func:`warmup_cosine`)."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / (1 - warmup)) if warmup < 1 else 1.0
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * rest))


def build_scheduler(optimizer, sched_cfg, steps_per_epoch: int, epochs: int, clock=None):
    """Per optimizer step: warm-up then cosine over ``epochs``; with ``sched_cfg.time_budget_s``,
    over ``clock``'s training time instead, the warm-up taking the same fraction of the budget as
    its steps take of ``epochs``."""
    total = max(1, steps_per_epoch * epochs)
    warmup = sched_cfg.warmup_steps
    if warmup is None:
        warmup = int(round(sched_cfg.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, total)
    if sched_cfg.time_budget_s is not None:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine_progress(clock.progress, warmup / total, sched_cfg.min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup, total, sched_cfg.min_lr_ratio))


class ModelEMA:
    """Exponential moving average of parameters and buffers (Polyak averaging)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- d * theta_ema + (1 - d) * theta (buffers copied)."""
        src = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(src[name].detach(), 1.0 - self.decay)
            else:
                value.copy_(src[name])
