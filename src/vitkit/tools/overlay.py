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
    for ax, m, title in zip(axes[1:panels], maps, titles, strict=True):
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


def display_size(hw: tuple[int, int], long_side: int = 256) -> tuple[int, int]:
    """(H, W) scaled so that the longer side is ``long_side`` pixels (aspect ratio kept)."""
    scale = long_side / max(hw)
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _rgb(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> (3, *size): grey repeated to RGB, nearest-neighbour resized (crisp pixels)."""
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    return F.interpolate(image[None].float(), size=size, mode="nearest")[0]


def _to_uint8(rgb: torch.Tensor):
    """(3, H, W) in [0, 1] -> numpy (H, W, 3) uint8."""
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def blend_heatmap(image: torch.Tensor, m: torch.Tensor, long_side: int = 256, alpha: float = 0.5,
                  cmap: str = "jet"):
    """The image (C, H, W) in [0, 1] with a (gh, gw) map on top, as numpy (H', W', 3) uint8."""
    import matplotlib

    size = display_size(tuple(image.shape[-2:]), long_side)
    heat = matplotlib.colormaps[cmap](upsample_map(m, size).numpy())[..., :3]  # (H', W', 3)
    heat = torch.from_numpy(heat).float().permute(2, 0, 1)
    return _to_uint8((1 - alpha) * _rgb(image, size) + alpha * heat)


def palette(num_classes: int) -> torch.Tensor:
    """(K, 3) distinct colours in [0, 1]; class 0 (background in the seg data sets) is black."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors
    rest = [colours[(2 * i) % 20 + (2 * i // 20) % 2] for i in range(max(num_classes - 1, 0))]
    return torch.tensor([(0.0, 0.0, 0.0)] + rest)[:num_classes].float()


def blend_mask(image: torch.Tensor, mask: torch.Tensor, colours: torch.Tensor, long_side: int = 256,
               alpha: float = 0.5):
    """The image (C, H, W) with a class mask (h, w) painted in ``colours`` (K, 3), numpy uint8."""
    size = display_size(tuple(image.shape[-2:]), long_side)
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()  # (H', W')
    painted = colours[mask].permute(2, 0, 1)  # (3, H', W')
    return _to_uint8((1 - alpha) * _rgb(image, size) + alpha * painted)
