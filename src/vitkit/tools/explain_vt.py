"""Explain a Visual Transformer (Wu et al. 2020): what each visual token looks at.

Tokenizer: A = softmax_HW(X W_A) (B, HW, L); column l is visual token l's spatial attention
(where on the feature map it gathers from). Projector: softmax_L((X W_Q)(T W_K)^T) (B, HW, L);
column l shows which pixels read back from token l. Both are shown per token as a map.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from vitkit.tools.explain import capture_attention


class VTExplanation(NamedTuple):
    """Per VT module (in forward order): maps (B, L, gh, gw) over that module's feature map."""

    logits: torch.Tensor  # (B, classes) or dense (B, classes, H, W)
    names: tuple[str, ...]  # module path of each VT module, e.g. "vt.0" or "neck.levels.2"
    tokenizer: tuple[torch.Tensor, ...]  # A^T as maps: (B, L, gh, gw)
    projector: tuple[torch.Tensor | None, ...]  # projector attention per token: (B, L, gh, gw)


def vt_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every VT module (anything with a ``tokenizer`` that keeps ``last_attn``)."""
    return [(n, m) for n, m in model.named_modules()
            if hasattr(getattr(m, "tokenizer", None), "last_attn")]


def is_vt(model: nn.Module) -> bool:
    return bool(vt_modules(model))


def _grid(hw: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The (gh, gw) of a flattened map with ``hw`` pixels, same aspect ratio as the image."""
    gh = max(1, round(math.sqrt(hw * image_hw[0] / image_hw[1])))
    while hw % gh:
        gh -= 1
    return gh, hw // gh


def _as_maps(attn: torch.Tensor | None, image_hw: tuple[int, int]) -> torch.Tensor | None:
    """(B, HW, L) -> (B, L, gh, gw)."""
    if attn is None:
        return None
    gh, gw = _grid(attn.shape[1], image_hw)
    return rearrange(attn, "b (h w) l -> b l h w", h=gh, w=gw)


@torch.no_grad()
def explain_vt(model: nn.Module, x: torch.Tensor) -> VTExplanation:
    """Run the model once with capture on; collect tokenizer and projector attention."""
    mods = vt_modules(model)
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model):
            logits = model(x)
            size = tuple(x.shape[-2:])
            tok = tuple(_as_maps(m.tokenizer.last_attn, size) for _, m in mods)
            proj = tuple(_as_maps(getattr(m.projector, "last_attn", None), size) for _, m in mods)
    finally:
        model.train(was_training)
    return VTExplanation(logits, tuple(n for n, _ in mods), tok, proj)


def save_vt_explanation(exp: VTExplanation, image: torch.Tensor, out_dir, label: str = "") -> list:
    """One PNG grid per VT module for the tokenizer (and one for the projector), sample 0."""
    from vitkit.tools.overlay import save_overlay_grid

    paths = []
    for name, tok, proj in zip(exp.names, exp.tokenizer, exp.projector, strict=True):
        safe = name.replace(".", "_") or "vt"
        for kind, maps, what in (("tokenizer", tok, "spatial attention A of each visual token"),
                                 ("projector", proj, "pixels reading back from each token")):
            if maps is None:
                continue
            titles = [f"token {i}" for i in range(maps.shape[1])]
            paths.append(save_overlay_grid(image, maps[0], titles, f"{out_dir}/{kind}_{safe}.png",
                                           suptitle=f"{label}  |  {name} {kind}: {what}".strip(" |")))
    return paths
