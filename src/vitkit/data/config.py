"""The data configuration (one typed dataclass) and what :func:`build_data` returns."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from vitkit.checks import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, SEED, SIDE, each, number, optional
from vitkit.preprocess import Preprocess

DATASETS = ("digits", "fashion-mnist", "imagefolder", "seg-canvas", "seg-folder")
AUGMENTS = ("none", "basic", "randaugment")
IGNORE_INDEX = 255


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how to augment it; every field has a default."""

    name: str = "digits"  # digits | fashion-mnist | imagefolder | seg-canvas | seg-folder
    data_dir: str | None = None
    img_size: int | None = None  # None = native size (digits 8, fashion-mnist 28, canvas canvas_size)
    val_fraction: float = 0.1  # held-out fraction when one folder (or digits) is split by seed
    seed: int = 0
    augment: str = "basic"  # none | basic (random crop with padding + horizontal flip) | randaugment
    crop_padding: int = 2  # in-memory data sets: padding of the random crop
    crop_pct: float | None = None  # folders: evaluation center crop; None = the --init weights' (else 0.875)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # folders: area fraction range of the random resized crop
    hflip: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    random_erasing: float = 0.0  # probability of erasing one random rectangle per training image (Zhong et al.)
    limit_train: int | None = None  # keep a seeded subset of N training items (quick runs)
    limit_val: int | None = None
    canvas_size: int = 64
    canvas_items: int = 3
    canvas_train_size: int = 6000  # number of generated training canvases
    canvas_val_size: int = 1000

    checks: ClassVar[dict] = {
        "img_size": optional(SIDE), "val_fraction": number(0, 1, lo_open=True, hi_open=True), "seed": SEED,
        "crop_padding": NON_NEGATIVE_INT, "crop_pct": optional(number(0, 1, lo_open=True)),
        "crop_scale": each(number(0, 1, lo_open=True), length=2), "randaugment_ops": NON_NEGATIVE_INT,
        "randaugment_magnitude": number(0, 30, integer=True), "mixup_alpha": NON_NEGATIVE,
        "cutmix_alpha": NON_NEGATIVE, "random_erasing": number(0, 1), "limit_train": optional(COUNT),
        "limit_val": optional(COUNT),
        "canvas_size": SIDE, "canvas_items": COUNT, "canvas_train_size": COUNT, "canvas_val_size": COUNT,
    }


@dataclass
class DataBundle:
    """Train/val datasets plus everything a model and a trainer need to know about them.

    Items are ``(image, target)``: image a normalised float tensor (C, H, W); target an int
    label (classification) or a LongTensor mask (H, W) of class indices (segmentation).
    ``preprocess`` is how every image was resized and normalised (saved with the model).
    """

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    task: str  # "classification" | "segmentation"
    num_classes: int
    class_names: list[str]
    preprocess: Preprocess
    batch_transform: Callable | None  # (images, labels) -> (images, soft targets (B, classes))
    ignore_index: int = IGNORE_INDEX

    @property
    def in_chans(self) -> int:
        return self.preprocess.in_chans

    @property
    def img_size(self) -> int:
        """The (square) input size."""
        return self.preprocess.img_size[0]

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.std
