"""Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    A_l   = norm_rows(fuse_heads(W_att^l) + I)       (residual identity, rows renormalised)
    R_L   = A_L A_{L-1} ... A_1                       (rolled out through the layers)

``R_L[i, j]`` is how much input token j flows into output token i. The paper writes the
layer matrix as 0.5 W + 0.5 I, which is the same after renormalising the rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from vitkit.errors import VitkitError

Fusion = Literal["mean", "max", "min"]
FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: torch.Tensor, fusion: Fusion = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by the mean, max or min over the heads."""
    if fusion == "mean":
        return attn.mean(dim=1)
    if fusion == "max":
        return attn.amax(dim=1)
    if fusion == "min":
        return attn.amin(dim=1)
    raise VitkitError(f"unknown head fusion '{fusion}'; choose one of {', '.join(FUSIONS)}")


def attention_rollout(attns: Sequence[torch.Tensor], fusion: Fusion = "mean") -> torch.Tensor:
    """Per-layer attention [(B, heads, N, N)] * L -> rollout R_L (B, N, N), first layer first."""
    if not attns:
        raise VitkitError("attention rollout needs at least one layer's attention map")
    rollout = None
    for attn in attns:
        fused = fuse_heads(attn.float(), fusion)  # (B, N, N)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        layer = fused + eye
        layer = layer / layer.sum(dim=-1, keepdim=True)  # rows sum to 1
        rollout = layer if rollout is None else layer @ rollout  # (B, N, N)
    return rollout


def rollout_to_patches(rollout: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, N) -> (B, gh, gw): the class token's row (or, without one, the mean row).

    A mean-pooled ViT has no class token, so the map shows how much each patch flows into
    the average of the output tokens, which is what its head sees.
    """
    if num_prefix > 0:
        row = rollout[:, 0, num_prefix:]  # (B, gh*gw)
    else:
        row = rollout.mean(dim=1)  # (B, N)
    return row.reshape(row.shape[0], *grid)
