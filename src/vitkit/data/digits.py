"""scikit-learn's embedded handwritten digits (1,797 images, 8x8, 1 channel, 10 classes)."""
from __future__ import annotations

import torch

from vitkit.data.config import DataBundle, DataConfig
from vitkit.data.datasets import ArrayDataset, presize, seeded_subset, stratified_split
from vitkit.data.transforms import ClassificationTransform, build_batch_transform, data_preprocess, float_stats
from vitkit.preprocess import Preprocess

NATIVE_SIZE = 8


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as float images (N, 1, 8, 8) in 0..1 (pixel scale 0..16 -> 0..1) and labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    return images, torch.as_tensor(digits.target, dtype=torch.long)


def build_digits(cfg: DataConfig, base: Preprocess | None = None) -> DataBundle:
    """Digits split into train/val by a seeded stratified ``val_fraction`` (``base``: see build_data)."""
    images, labels = load_digits_tensors()
    train_idx, val_idx = stratified_split(labels.tolist(), cfg.val_fraction, cfg.seed)
    mean, std = float_stats(images[train_idx])
    pre = data_preprocess(Preprocess(cfg.img_size or NATIVE_SIZE, 1, mean, std), base)
    images = presize(images, pre)
    make = lambda idx, train: ArrayDataset(  # noqa: E731
        images[idx], labels[idx], ClassificationTransform(cfg, pre, train)
    )
    return DataBundle(
        train=seeded_subset(make(train_idx, True), cfg.limit_train, cfg.seed, "limit_train"),
        val=seeded_subset(make(val_idx, False), cfg.limit_val, cfg.seed, "limit_val"),
        task="classification",
        num_classes=10,
        class_names=[str(d) for d in range(10)],
        preprocess=pre,
        batch_transform=build_batch_transform(cfg, "classification", 10),
    )
