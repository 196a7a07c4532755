"""Positional-embedding resampling for other image sizes (ViT §3.2, fine-tuning at higher res)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       num_prefix: int = 1) -> torch.Tensor:
    """(1, P + gh*gw, D) -> (1, P + nh*nw, D): 2-D bicubic over the patch grid, prefix kept."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False,
                         antialias=new_grid[0] < old_grid[0] or new_grid[1] < old_grid[1])
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, d)  # (1, nh*nw, D)
    return torch.cat([prefix, grid], dim=1)
