"""Optimizer, learning-rate schedule and EMA of weights."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, tokens and positional embeddings (1-D or token params)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("cls_token", "dist_token", "pos_embed"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, 2019)."""
    return torch.optim.AdamW(param_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                             betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """lr factor: linear warm-up to 1 over ``warmup`` steps, then cosine to ``min_ratio`` (SGDR)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, sched_cfg, steps_per_epoch: int, epochs: int):
    total = max(1, steps_per_epoch * epochs)
    warmup = sched_cfg.warmup_steps
    if warmup is None:
        warmup = int(round(sched_cfg.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, total)
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
