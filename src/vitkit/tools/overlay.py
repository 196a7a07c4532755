"""PNG overlays of attention maps on the input image (matplotlib, headless: no pyplot state)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


def upsample_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(gh, gw) attention -> (H, W) in [0, 1] (bilinear, then min-max scaled)."""
    m = F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def _show_image(ax, image: torch.Tensor) -> None:
    """``image`` (C, H, W) in [0, 1]."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy())


def save_overlay_grid(image: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], path,
                      suptitle: str = "", ncols: int | None = None, alpha: float = 0.5) -> Path:
    """Write the image followed by one overlay per map (K, gh, gw) as a grid; returns the path."""
    from matplotlib.figure import Figure

    panels = 1 + maps.shape[0]
    ncols = ncols or min(panels, 8)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(2.0 * ncols, 2.1 * nrows + (0.4 if suptitle else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    size = tuple(image.shape[-2:])
    _show_image(axes[0], image)
    axes[0].set_title("input", fontsize=8)
    for ax, m, title in zip(axes[1:], maps, titles, strict=True):
        _show_image(ax, image)
        ax.imshow(upsample_map(m, size).numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
