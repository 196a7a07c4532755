"""Explain a prediction with the model's own attention (the real forward pass, captured).

ViT: per-layer, per-head attention maps (B, heads, N, N), the class token's attention to the
patches, and attention rollout (Abnar & Zuidema 2020). A mean-pooled ViT has no class token:
its "class" maps show the attention each patch receives, averaged over all query tokens,
and its rollout shows the flow into the mean of the output tokens (what its head pools).
VT: see :mod:`vitkit.tools.explain_vt` (tokenizer and projector attention).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.layers.helpers import attributes_set
from vitkit.tools.rollout import Fusion, attention_rollout, rollout_to_patches


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Set ``capture`` on every attention module for the duration (fused SDPA otherwise).

    Yields the capturing modules in forward order; their ``last_attn`` is cleared on exit.
    """
    mods = [m for m in model.modules() if isinstance(getattr(m, "capture", None), bool)]
    try:
        with attributes_set(mods, "capture", True):
            yield mods
    finally:
        for m in mods:
            m.last_attn = None


class ViTExplanation(NamedTuple):
    """Attention of a ViT for a batch; L = the explained layers, N = prefix + patch tokens."""

    logits: torch.Tensor  # (B, classes)
    attentions: torch.Tensor  # (L, B, heads, N, N) softmax rows, from the real forward pass
    cls_maps: torch.Tensor  # (L, B, heads, gh, gw) class-token row (mean-pooled: mean column)
    rollout: torch.Tensor  # (B, gh, gw) attention rollout through ALL layers
    layers: tuple[int, ...]
    num_prefix: int
    grid: tuple[int, int]


def _is_vit(model: nn.Module) -> bool:
    return getattr(model, "family", "") == "vit" and hasattr(model, "blocks")


def token_maps(attn: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, heads, N, N) -> (B, heads, gh, gw): the class token's attention to each patch,
    or (no class token) the attention each patch receives, averaged over the queries."""
    row = attn[:, :, 0, num_prefix:] if num_prefix else attn.mean(dim=2)  # (B, heads, gh*gw)
    return row.reshape(*row.shape[:2], *grid)


def _layer_indices(layers: Sequence[int] | None, depth: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(depth))
    out = []
    for i in layers:
        if not -depth <= i < depth:
            raise VitkitError(f"layer {i} out of range: the model has {depth} layers (0..{depth - 1})")
        out.append(i % depth)
    return tuple(out)


def inner_vit(model: nn.Module) -> nn.Module | None:
    """The model itself if it is a ViT, else its first ViT submodule (e.g. a ViT-seg backbone)."""
    return next((m for m in model.modules() if _is_vit(m)), None)


@torch.no_grad()
def explain_vit(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None,
                fusion: Fusion = "mean") -> ViTExplanation:
    """Run ``model`` on ``x`` (B, C, H, W) once, capturing every block's attention of its ViT."""
    vit = inner_vit(model)
    if vit is None:
        raise VitkitError(f"{type(model).__name__} has no ViT inside; use vitkit.tools.explain.explain()")
    was_training = model.training
    model.eval()
    try:
        with capture_attention(vit):  # the full path: every token queries in every block
            logits = model.forward_head(model.forward_features(x))
            attns = [blk.attn.last_attn for blk in vit.blocks]  # L x (B, heads, N, N)
    finally:
        model.train(was_training)
    attns = [a for a in attns if a is not None]  # a dense head may stop before the last block
    grid = vit.patch_embed.grid(*x.shape[-2:])
    take = _layer_indices(layers, len(attns))
    stacked = torch.stack([attns[i] for i in take])  # (L, B, heads, N, N)
    cls_maps = torch.stack([token_maps(attns[i], vit.num_prefix, grid) for i in take])
    roll = rollout_to_patches(attention_rollout(attns, fusion), vit.num_prefix, grid)
    return ViTExplanation(logits, stacked, cls_maps, roll, take, vit.num_prefix, grid)


def explain(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None, fusion: Fusion = "mean"):
    """A :class:`ViTExplanation` for a ViT (or a model built on one), a ``VTExplanation`` for VT."""
    if inner_vit(model) is not None:
        return explain_vit(model, x, layers, fusion)
    from vitkit.tools.explain_vt import explain_vt, is_vt

    if is_vt(model):
        return explain_vt(model, x)
    raise VitkitError(
        f"cannot explain a {type(model).__name__} (family '{getattr(model, 'family', '?')}'): "
        "it has no attention; pick a ViT or VT model"
    )


def _label(logits: torch.Tensor, class_names: Sequence[str] | None) -> str:
    if logits.ndim != 2:
        return ""
    probs = logits.float().softmax(dim=-1)[0]
    k = int(probs.argmax())
    name = class_names[k] if class_names and k < len(class_names) else f"class {k}"
    return f"prediction: {name} ({probs[k]:.0%})"


def save_vit_explanation(exp: ViTExplanation, image: torch.Tensor, out_dir, label: str = "") -> list:
    """PNGs for sample 0: rollout + per-layer mean maps, and one head grid per explained layer."""
    from vitkit.tools.overlay import save_overlay_grid

    what = "CLS attention" if exp.num_prefix else "mean attention received"
    maps = torch.cat([exp.rollout[:1], exp.cls_maps[:, 0].mean(dim=1)])  # (1 + L, gh, gw)
    titles = ["rollout"] + [f"layer {i} (head mean)" for i in exp.layers]
    paths = [save_overlay_grid(image, maps, titles, f"{out_dir}/rollout.png",
                               suptitle=f"{label}  |  rollout + {what} per layer".strip(" |"))]
    for j, layer in enumerate(exp.layers):
        heads = exp.cls_maps[j, 0]  # (heads, gh, gw)
        titles = [f"head {h}" for h in range(heads.shape[0])]
        paths.append(save_overlay_grid(image, heads, titles, f"{out_dir}/attention_layer{layer:02d}.png",
                                       suptitle=f"layer {layer}: {what} per head"))
    return paths


def to_cpu(value):
    """Tensors (also inside tuples) copied to the CPU, for plotting."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    return tuple(to_cpu(v) for v in value) if isinstance(value, tuple) else value


def image_batch(sources: Sequence, pre) -> torch.Tensor:
    """Image files (or their bytes) -> the model input (B, C, H, W), preprocessed by ``pre``."""
    from vitkit.data import load_image

    return torch.stack([load_image(s, pre) for s in sources])


def explain_loaded(model: nn.Module, image_path, out_dir=None, layers: Sequence[int] | None = None,
                   fusion: Fusion = "mean", device: torch.device | str = "cpu"):
    """:func:`explain_image` for a model already built (and in eval mode)."""
    x = image_batch([image_path], model.preprocess)  # (1, C, H, W)
    exp = explain(model.to(device), x.to(device), layers, fusion)
    exp = type(exp)(*(to_cpu(v) for v in exp))
    if out_dir is None:
        return exp, []
    image = model.preprocess.denormalize(x)[0]  # (C, H, W) in [0, 1]
    label = _label(exp.logits, model.class_names)
    if isinstance(exp, ViTExplanation):
        return exp, save_vit_explanation(exp, image, out_dir, label)
    from vitkit.tools.explain_vt import save_vt_explanation

    return exp, save_vt_explanation(exp, image, out_dir, label)


def explain_image(spec, image_path, out_dir=None, layers: Sequence[int] | None = None,
                  fusion: Fusion = "mean", device: torch.device | str = "cpu", overrides: dict | None = None):
    """Explain one image file with a model name, save dir or run dir (model-config ``overrides``
    on top; run on ``device``); optionally write PNGs. Returns (explanation with CPU tensors,
    list of written PNG paths).
    """
    from vitkit.registry import create_model

    model = create_model(spec, **(overrides or {})).eval()
    return explain_loaded(model, image_path, out_dir, layers, fusion, device)
