"""seg-canvas: a built-in semantic segmentation task made from Fashion-MNIST.

Each canvas (canvas_size x canvas_size, black) receives ``canvas_items`` random Fashion-MNIST
items at random positions, pasted in order (later items cover earlier ones). An item's
silhouette is its pixels > ``SILHOUETTE_THRESHOLD``; only those pixels are pasted, and the
mask gets the item's class + 1 there. So mask 0 (background) <=> image pixel 0, and
num_classes = 11. Train canvases use the train split, val canvases the test split.
Generation is vectorised numpy, deterministic by seed, and cached in memory.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from vitkit.data import fashion_mnist as fm
from vitkit.data.config import DataBundle, DataConfig
from vitkit.data.datasets import SegArrayDataset, check_limit
from vitkit.data.transforms import SegmentationTransform, build_batch_transform, data_preprocess, uint8_stats
from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess

SILHOUETTE_THRESHOLD = 16  # uint8 pixel value above which an item pixel belongs to the item
ITEM = fm.NATIVE_SIZE
CLASS_NAMES = ["background"] + fm.CLASS_NAMES


def compose_canvases(items: np.ndarray, labels: np.ndarray, n: int, size: int, k: int, seed: int):
    """Paste ``k`` of ``items`` (M, 28, 28) on each of ``n`` canvases -> images (n, S, S), masks (n, S, S).

    Each random quantity has its own seeded stream, so the first n' canvases do not depend on n.
    """
    picks, ys, xs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    which = picks.integers(0, len(items), size=(n, k))  # (n, k) item indices
    top, left = ys.integers(0, size - ITEM + 1, size=(n, k)), xs.integers(0, size - ITEM + 1, size=(n, k))
    images = np.zeros(n * size * size, dtype=np.uint8)  # flat (n*S*S,): one scatter per item layer
    masks = np.zeros(n * size * size, dtype=np.uint8)
    span = np.arange(ITEM)
    base = (np.arange(n) * size * size)[:, None, None]  # (n, 1, 1) start of each canvas
    for j in range(k):  # painter's order: later items cover earlier ones
        flat = base + (top[:, j, None] + span)[:, :, None] * size + (left[:, j, None] + span)[:, None, :]  # (n, 28, 28)
        item = items[which[:, j]]  # (n, 28, 28)
        sil = item > SILHOUETTE_THRESHOLD
        cls = np.broadcast_to((labels[which[:, j]] + 1).astype(np.uint8)[:, None, None], sil.shape)
        images[flat[sil]] = item[sil]
        masks[flat[sil]] = cls[sil]
    images, masks = images.reshape(n, size, size), masks.reshape(n, size, size)
    return images, masks


@functools.lru_cache(maxsize=8)
def _cached_canvases(data_dir: str | None, split: str, stamp: tuple, n: int, size: int, k: int, seed: int):
    items, labels = fm.load_split(data_dir, split)
    images, masks = compose_canvases(items[:, 0].numpy(), labels.numpy(), n, size, k, seed)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks)  # (n, 1, S, S), (n, S, S)


def make_split(cfg: DataConfig, split: str, n: int, limit: int | None, key: str):
    """uint8 canvases (n, 1, S, S) and masks (n, S, S) of one split, at most ``limit`` of them."""
    check_limit(limit, key)
    n = min(n, limit) if limit is not None else n
    folder = fm.resolve_dir(cfg.data_dir)
    paths = [fm.find_file(folder, stem) for stem in fm.FILES[split]]
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    salt = 0 if split == "train" else 1  # train and val canvases use different streams
    return _cached_canvases(cfg.data_dir, split, stamp, n, cfg.canvas_size, cfg.canvas_items, cfg.seed * 2 + salt)


def _check(cfg: DataConfig) -> None:
    if cfg.canvas_size < ITEM:
        raise VitkitError(f"canvas_size must be at least {ITEM} (one Fashion-MNIST item), got {cfg.canvas_size}")
    if cfg.canvas_items < 1 or cfg.canvas_train_size < 1 or cfg.canvas_val_size < 1:
        raise VitkitError("canvas_items, canvas_train_size and canvas_val_size must be >= 1")


def build_seg_canvas(cfg: DataConfig, base: Preprocess | None = None) -> DataBundle:
    """Fashion-MNIST canvases for segmentation: 1 channel, 11 classes (0 = background; ``base``: see build_data)."""
    _check(cfg)
    train_x, train_m = make_split(cfg, "train", cfg.canvas_train_size, cfg.limit_train, "limit_train")
    val_x, val_m = make_split(cfg, "test", cfg.canvas_val_size, cfg.limit_val, "limit_val")
    mean, std = uint8_stats(train_x)
    pre = data_preprocess(Preprocess(cfg.img_size or cfg.canvas_size, 1, mean, std), base)
    return DataBundle(
        train=SegArrayDataset(train_x, train_m, SegmentationTransform(cfg, pre, True)),
        val=SegArrayDataset(val_x, val_m, SegmentationTransform(cfg, pre, False)),
        task="segmentation",
        num_classes=len(CLASS_NAMES),
        class_names=list(CLASS_NAMES),
        preprocess=pre,
        batch_transform=build_batch_transform(cfg, "segmentation", len(CLASS_NAMES)),
    )
