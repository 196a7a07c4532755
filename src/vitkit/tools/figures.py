"""The ViT paper's analysis figures (Dosovitskiy et al., ICLR 2021, Fig. 7) for any ViT.

- ``filters``: principal components of the patch-embedding filters E (Fig. 7 left). Each row
  of the projection (D, C p^2) is one filter; the components are the leading right singular
  vectors of the centred (D, C p^2) matrix, drawn as C x p x p images.
- ``pos-embed``: cosine similarity of each patch's position embedding to every other one, drawn
  as a grid of grids: tile (i, j) is a gh x gw map (Fig. 7 center).
- ``attention-distance``: for each head, the mean over queries (and images) of
  sum_k a_qk * ||c_q - c_k||, the attention-weighted distance in pixels between the query
  patch's centre and the key patches' centres (Fig. 7 right). Only patch-to-patch attention
  counts: the rows are restricted to the patch keys and renormalised to sum to 1.

The numbers come from functions that return tensors; ``plot_*`` draw them (matplotlib, no pyplot).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.errors import VitkitError
from vitkit.layers import PatchEmbed
from vitkit.tools.explain import explain_loaded, explain_vit, image_batch, inner_vit
from vitkit.tools.explain_vt import is_vt

FIGURES = ("filters", "pos-embed", "attention-distance", "rollout", "tokens")


def _vit_of(model: nn.Module, figure: str) -> nn.Module:
    vit = inner_vit(model)
    if vit is None:
        raise VitkitError(f"--figure {figure} needs a ViT; {type(model).__name__} has none "
                          "(VT models: use --figure tokens)")
    return vit


def patch_embedding_components(model: nn.Module, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` principal components of the patch-embedding filters.

    Returns (components (k, C, p, p), explained-variance ratio (k,)), both float64.
    """
    vit = _vit_of(model, "filters")
    if type(vit.patch_embed) is not PatchEmbed:
        raise VitkitError(f"--figure filters needs a linear patch embedding; this ViT has a "
                          f"{type(vit.patch_embed).__name__} (conv stem or hybrid CNN)")
    w = vit.patch_embed.proj.weight.detach().cpu().double()  # (D, C, p, p)
    flat = w.flatten(1)  # (D, C*p*p): one filter per row
    centred = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(D, Cpp), Cpp)
    k = min(k, vh.shape[0])
    comps = vh[:k] * vh[:k].gather(1, vh[:k].abs().argmax(1, keepdim=True)).sign()  # largest entry > 0
    var = s**2 / (s**2).sum()
    return comps.reshape(k, *w.shape[1:]), var[:k]


def position_embedding_similarity(model: nn.Module) -> torch.Tensor:
    """(gh, gw, gh, gw): cosine similarity between the position embeddings of patch (i, j)
    and patch (u, v); prefix tokens (class, distillation) are left out."""
    vit = _vit_of(model, "pos-embed")
    pos = vit.pos_embed.detach().cpu()[0, vit.num_prefix:].double()  # (N, D)
    unit = F.normalize(pos, dim=-1)
    return (unit @ unit.T).reshape(*vit.grid, *vit.grid)  # (gh, gw, gh, gw)


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """(N, N) Euclidean distance in pixels between the centres of the patches of a grid."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * patch[0], cols.flatten() * patch[1]], dim=1).double()  # (N, 2)
    return torch.cdist(centres, centres)


def attention_distance(attentions: torch.Tensor, num_prefix: int, grid: tuple[int, int],
                       patch: tuple[int, int]) -> torch.Tensor:
    """(L, B, heads, N, N) attention -> (L, heads) mean attention distance in pixels."""
    a = attentions[..., num_prefix:, num_prefix:].double()  # (L, B, heads, Np, Np)
    a = a / a.sum(dim=-1, keepdim=True)
    per_query = (a * patch_distances(grid, patch).to(a.device)).sum(dim=-1)  # (L, B, heads, Np)
    return per_query.mean(dim=(1, 3))  # (L, heads)


def mean_attention_distance(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(L, heads) mean attention distance of ``model`` over ``images`` (B, C, H, W), in batches."""
    vit = _vit_of(model, "attention-distance")
    total, count = None, 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        exp = explain_vit(model, x)
        d = attention_distance(exp.attentions, exp.num_prefix, exp.grid, vit.patch_embed.patch_size)
        total = d * x.shape[0] if total is None else total + d * x.shape[0]
        count += x.shape[0]
    return total / count


def _figure(cols: int, rows: int, scale: float = 1.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(scale * cols, scale * rows + 0.5))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def filter_mosaic(comps: torch.Tensor, cols: int = 7) -> torch.Tensor:
    """(k, C, p, p) -> one (rows*(p+1)-1, cols*(p+1)-1, C) image; each component min-max scaled
    to [0, 1], tiles separated by 1-pixel white lines."""
    k, c, p = comps.shape[0], comps.shape[1], comps.shape[-1]
    rows = -(-k // cols)
    out = torch.ones(rows * (p + 1) - 1, cols * (p + 1) - 1, c, dtype=comps.dtype)
    for i in range(k):
        tile = comps[i] - comps[i].min()
        tile = tile / tile.max().clamp_min(1e-12)
        r, q = divmod(i, cols)
        out[r * (p + 1):r * (p + 1) + p, q * (p + 1):q * (p + 1) + p] = tile.permute(1, 2, 0)
    return out


def plot_filters(comps: torch.Tensor, var: torch.Tensor, path, title: str = "") -> Path:
    """The components as tiles (grey for C = 1, RGB for C = 3), numbered, with explained variance."""
    cols, p = min(comps.shape[0], 7), comps.shape[-1]
    mosaic = filter_mosaic(comps, cols)
    rows = -(-comps.shape[0] // cols)
    fig = _figure(1.15 * cols, 1.15 * rows)
    ax = fig.subplots()
    ax.imshow(mosaic.numpy() if mosaic.shape[-1] == 3 else mosaic[..., 0].numpy(), cmap="gray",
              vmin=0, vmax=1, interpolation="nearest")
    for i in range(comps.shape[0]):
        r, q = divmod(i, cols)
        ax.text(q * (p + 1) + (p - 1) / 2, r * (p + 1) - 0.6, f"{i + 1}: {float(var[i]):.0%}",
                ha="center", va="bottom", fontsize=6)
    ax.axis("off")
    ax.set_title(title or "patch-embedding filters: principal components (explained variance)",
                 fontsize=9, pad=12)
    fig.tight_layout()
    return _save(fig, path)


def similarity_mosaic(sim: torch.Tensor) -> torch.Tensor:
    """(gh, gw, gh, gw) -> one (gh*(gh+1)-1, gw*(gw+1)-1) image, tiles separated by NaN lines."""
    gh, gw = sim.shape[:2]
    out = torch.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), float("nan"), dtype=sim.dtype)
    for i in range(gh):
        for j in range(gw):
            out[i * (gh + 1):i * (gh + 1) + gh, j * (gw + 1):j * (gw + 1) + gw] = sim[i, j]
    return out


def plot_pos_embed(sim: torch.Tensor, path, title: str = "") -> Path:
    """The grid of grids: tile (i, j) shows how similar patch (i, j)'s embedding is to all others."""
    import matplotlib

    gh, gw = sim.shape[:2]
    fig = _figure(6, 5.5)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(similarity_mosaic(sim).numpy(), cmap=cmap, vmin=-1, vmax=1)
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)], fontsize=7)
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)], fontsize=7)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_title(title or "position embedding similarity", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_attention_distance(dist: torch.Tensor, path, image_size: tuple[int, int] | None = None,
                            title: str = "") -> Path:
    """One dot per head at each depth (layer 1..L), as in the paper's right panel."""
    depth, heads = dist.shape
    fig = _figure(5, 4)
    ax = fig.subplots()
    for h in range(heads):
        ax.scatter(range(1, depth + 1), dist[:, h].numpy(), s=14, label=f"head {h}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(range(1, depth + 1))
    top = float(dist.max()) * 1.1 if image_size is None else float(torch.tensor(image_size).double().norm()) / 2
    ax.set_ylim(0, max(top, float(dist.max()) * 1.05))
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_title(title or "mean attention distance per head", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _filters(model, images, out: Path, device) -> list[Path]:
    comps, var = patch_embedding_components(model)
    return [plot_filters(comps, var, out / "filters.png")]


def _pos_embed(model, images, out: Path, device) -> list[Path]:
    return [plot_pos_embed(position_embedding_similarity(model), out / "pos_embed.png")]


def _attention_distance(model, images, out: Path, device) -> list[Path]:
    x = image_batch(images, model.preprocess)  # (B, C, H, W)
    dist = mean_attention_distance(model.to(device), x.to(device)).cpu()
    what = f"mean attention distance per head ({len(images)} image{'s' * (len(images) > 1)})"
    return [plot_attention_distance(dist, out / "attention_distance.png", tuple(x.shape[-2:]), what)]


_WRITERS = {"filters": _filters, "pos-embed": _pos_embed, "attention-distance": _attention_distance}
_NEEDS_IMAGES = ("attention-distance", "rollout", "tokens")


def _check(model: nn.Module, name: str, images) -> None:
    """Refuse a figure this model or these inputs cannot give, before anything is written."""
    if name not in FIGURES:
        raise VitkitError(f"unknown figure '{name}'; choose from {', '.join(FIGURES)}")
    if name in _NEEDS_IMAGES and not images:
        raise VitkitError(f"--figure {name} needs at least one image; pass image files or a folder")
    if name == "tokens" and not is_vt(model):
        raise VitkitError(f"--figure tokens needs a VT model; {type(model).__name__} has no visual tokens")
    if name != "tokens":
        _vit_of(model, name)


def write_figures(model: nn.Module, names, images, out_dir, layers=None, fusion: str = "mean",
                  device: torch.device | str = "cpu") -> list[Path]:
    """Write each named figure (see ``FIGURES``) as PNGs under ``out_dir``; returns the paths.

    ``images``: image files, read with ``model.preprocess``. ``attention-distance`` averages
    over all of them; ``rollout`` (ViT) and ``tokens`` (VT token maps) explain the first one.
    """
    for name in names:
        _check(model, name, images)
    out, paths = Path(out_dir), []
    for name in dict.fromkeys(names):
        if name in _WRITERS:
            paths += _WRITERS[name](model, images, out, device)
        else:  # rollout (ViT) or tokens (VT): the explanation of the first image
            paths += explain_loaded(model, images[0], out, layers, fusion, device)[1]
    return paths
