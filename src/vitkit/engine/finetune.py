"""Which parameters train in an epoch: full fine-tuning, linear probe, or head warm-up.

A linear probe trains the model's ``classifier`` modules alone; the rest is frozen and kept
in eval mode (BatchNorm statistics and dropout do not move). Head warm-up does the same for
the first ``finetune.head_warmup_epochs`` epochs, then trains everything. What trains in
epoch ``e`` is a function of ``(cfg, e)`` only, so a resumed run is bit-identical.
"""
from __future__ import annotations

from torch import nn

from vitkit.errors import VitkitError


def head_param_names(model: nn.Module) -> set[str]:
    """Names of the parameters under the model's ``classifier`` modules."""
    prefixes = tuple(f"{p}." for p in getattr(model, "classifier", ()))
    names = {name for name, _ in model.named_parameters() if name.startswith(prefixes)}
    if not names:
        raise VitkitError(f"{type(model).__name__} has no classifier parameters to train alone; "
                          "use finetune.mode=full or give the model a head (num_classes > 0)")
    return names


def head_only(finetune_cfg, epoch: int) -> bool:
    """True when epoch ``epoch`` (0-based) trains the head alone."""
    if finetune_cfg.mode == "linear":
        return True
    return finetune_cfg.mode == "head-warmup" and epoch < finetune_cfg.head_warmup_epochs


def set_trainable(model: nn.Module, only_head: bool) -> None:
    """requires_grad on the head alone (``only_head``) or on every parameter."""
    heads = head_param_names(model) if only_head else set()
    for name, p in model.named_parameters():
        p.requires_grad_(not only_head or name in heads)


def train_mode(model: nn.Module, finetune_cfg, epoch: int) -> None:
    """Put ``model`` in training mode for ``epoch``: the frozen backbone of a head-only epoch in eval mode."""
    only_head = head_only(finetune_cfg, epoch)
    if finetune_cfg.mode != "full":
        set_trainable(model, only_head)
    model.train(not only_head)
    if only_head:
        for prefix in model.classifier:
            head = _submodule(model, prefix)
            if head is not None:
                head.train()


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:  # e.g. the distillation head of a model without one
        return None
