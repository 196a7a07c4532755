"""``build_data(cfg)``: one entry point for every data set (dispatch on ``cfg.name``)."""
from __future__ import annotations

import importlib

from vitkit.config import close_matches
from vitkit.data.config import DATASETS, DataBundle, DataConfig
from vitkit.data.transforms import check_augment
from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess

_BUILDERS = {
    "digits": ("vitkit.data.digits", "build_digits"),
    "fashion-mnist": ("vitkit.data.fashion_mnist", "build_fashion_mnist"),
    "imagefolder": ("vitkit.data.folder", "build_imagefolder"),
    "seg-folder": ("vitkit.data.folder", "build_seg_folder"),
    "seg-canvas": ("vitkit.data.seg_canvas", "build_seg_canvas"),
}


def build_data(cfg: DataConfig, base: Preprocess | None = None) -> DataBundle:
    """Load the data set named by ``cfg.name`` with its train/val transforms.

    ``base``: the preprocessing of the weights a model starts from (fine-tuning): its
    mean/std, interpolation and (folders) crop fraction replace the ones measured on the data,
    at the data's size and channels.
    """
    if cfg.name not in _BUILDERS:
        raise VitkitError(
            f"unknown data set '{cfg.name}'{close_matches(cfg.name, DATASETS)}; choose one of {', '.join(DATASETS)}")
    if cfg.img_size is not None and cfg.img_size < 1:
        raise VitkitError(f"img_size must be a positive number of pixels or None (native size), got {cfg.img_size}")
    check_augment(cfg)
    module, func = _BUILDERS[cfg.name]
    return getattr(importlib.import_module(module), func)(cfg, base)
