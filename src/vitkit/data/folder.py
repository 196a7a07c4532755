"""Image folders: ``imagefolder`` (one subfolder per class) and ``seg-folder`` (images + PNG masks).

Layouts (``data_dir``)::

    imagefolder:  [train/, val/ ->] CLASS_A/*.png, CLASS_B/*.jpg, ...
    seg-folder:   [train/, val/ ->] images/NAME.png|jpg  masks/NAME.png  [classes.txt]

Without train/ and val/ the one folder is split by a seeded ``val_fraction``. Images are read
with PIL on access; the channel count comes from the first image (grayscale -> 1, else 3) and
every image is converted to it. ``img_size`` defaults to the first image's larger side. Images
keep their aspect ratio: classification trains on random resized crops and evaluates on the
center crop (shorter side to size / crop_pct); segmentation resizes the shorter side to
``img_size`` and center-crops image and mask alike.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from vitkit.data.config import IGNORE_INDEX, DataBundle, DataConfig
from vitkit.data.datasets import seeded_subset, stratified_split
from vitkit.data.images import check_image, image_header, is_grayscale_mode, is_image_name, read_image, read_mask
from vitkit.data.transforms import (
    ClassificationTransform,
    SegmentationTransform,
    build_batch_transform,
    data_preprocess,
    float_stats,
)
from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess

STATS_SAMPLE = 256  # images used to estimate the normalisation mean/std
FOLDER_CROP_PCT = 0.875  # evaluation center crop of classification folders (timm's default)


class FolderDataset(Dataset):
    """(path, label) samples -> (transform(image), label), images read on access."""

    def __init__(self, samples: list[tuple[Path, int]], in_chans: int, transform):
        self.samples, self.in_chans, self.transform = samples, in_chans, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(read_image(path, self.in_chans)), label


class SegFolderDataset(Dataset):
    """(image path, mask path) pairs -> (image, LongTensor mask (H, W)), checked on access."""

    def __init__(self, pairs: list[tuple[Path, Path]], in_chans: int, num_classes: int, transform):
        self.pairs, self.in_chans, self.num_classes, self.transform = pairs, in_chans, num_classes, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_path, mask_path = self.pairs[i]
        image, mask = read_image(image_path, self.in_chans), read_mask(mask_path)
        if image.shape[-2:] != mask.shape:
            raise VitkitError(f"{mask_path}: mask is {tuple(mask.shape)} but {image_path.name} is "
                              f"{tuple(image.shape[-2:])}; they must match")
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise VitkitError(f"{mask_path}: class {int(mask[bad].max())} >= num_classes {self.num_classes}; "
                              "fix the mask or classes.txt")
        return self.transform(image, mask)


def _root(cfg: DataConfig) -> Path:
    if not cfg.data_dir:
        raise VitkitError(f"data set '{cfg.name}' needs a folder: pass --data-dir DIR (or set data_dir)")
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise VitkitError(f"data folder {root} does not exist; check --data-dir")
    return root


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    train, val = root / "train", root / "val"
    return (train, val) if train.is_dir() and val.is_dir() else None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p) and not p.name.startswith("."))


def scan_classes(folder: Path, classes: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """Class subfolders of ``folder`` -> ([(path, label)], class names); ``classes`` fixes the order."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise VitkitError(f"{folder} has no class subfolders; use one folder per class (e.g. {folder}/cat/*.png)")
    if classes is not None and found != classes:
        raise VitkitError(
            f"{folder} has classes {found} but the train folder has {classes}; use the same class folders")
    if len(found) < 2:
        raise VitkitError(f"{folder} has one class folder ({found[0]}); a classifier needs at least 2 classes "
                          "(one subfolder per class)")
    samples = []
    for label, name in enumerate(found):
        files = _images_in(folder / name)
        if not files:
            raise VitkitError(f"class folder {folder / name} holds no images (png, jpg, ...); add some or remove it")
        samples += [(p, label) for p in files]
    return samples, found


def _probe(path: Path, cfg: DataConfig) -> tuple[int, int]:
    """(in_chans, img_size) from the first image: grayscale -> 1 channel, anything else -> 3."""
    mode, size = image_header(path)
    return (1 if is_grayscale_mode(mode) else 3), cfg.img_size or max(size)


def check_files(paths: list[Path], split: str) -> None:
    """Header (and, where the format allows, structure) check of every file of ``split`` before
    training starts, so a corrupt validation image is reported now, not after an epoch."""
    for path in paths:
        try:
            check_image(path)
        except VitkitError as exc:
            raise VitkitError(f"{split} data: {exc}") from None


def _stats(paths: list[Path], in_chans: int, img_size: int, seed: int) -> Preprocess:
    """The preprocessing with mean/std from a seeded sample of up to ``STATS_SAMPLE`` images."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(paths), generator=gen)[:STATS_SAMPLE].tolist()
    sized = Preprocess(img_size, in_chans)  # resize only; the statistics are what we measure
    images = [sized.resize(read_image(paths[i], in_chans)) for i in pick]
    mean, std = float_stats(torch.stack(images).float() / 255.0)  # (n, C, S, S)
    return Preprocess(img_size, in_chans, mean, std)


def _random_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0.0 < val_fraction < 1.0 or n < 2:
        raise VitkitError(
            f"cannot split {n} items with val_fraction={val_fraction}; use 0 < val_fraction < 1 and >= 2 items")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def build_imagefolder(cfg: DataConfig, base: Preprocess | None = None) -> DataBundle:
    """Classification from class subfolders (train/ + val/, or one folder split by seed);
    ``base``: the initial weights' preprocessing (see build_data)."""
    root = _root(cfg)
    dirs = _split_dirs(root)
    if dirs:
        train_s, classes = scan_classes(dirs[0])
        val_s, _ = scan_classes(dirs[1], classes)
    else:
        samples, classes = scan_classes(root)
        train_idx, val_idx = stratified_split([s[1] for s in samples], cfg.val_fraction, cfg.seed)
        train_s, val_s = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    make = lambda s, chans, transform: FolderDataset(s, chans, transform)  # noqa: E731
    crop = cfg.crop_pct if cfg.crop_pct is not None or base is not None else FOLDER_CROP_PCT
    transform = lambda cfg, pre, train: ClassificationTransform(cfg, pre, train, resized_crop=True)  # noqa: E731
    return _folder_bundle(cfg, "classification", train_s, val_s, classes, make, transform, base, crop)


def _folder_bundle(cfg: DataConfig, task: str, train_items: list, val_items: list, classes: list[str],
                   make, transform_cls, base: Preprocess | None, crop_pct: float | None) -> DataBundle:
    """Probe channels/size and normalisation on the training images (unless ``base`` gives
    them), wrap both splits; the val files in use are checked now (a corrupt one is an error
    before epoch 1). ``crop_pct`` None keeps ``base``'s."""
    in_chans, img_size = _probe(train_items[0][0], cfg)
    measured = Preprocess(img_size, in_chans) if base is not None else None
    pre = data_preprocess(measured or _stats([p for p, _ in train_items], in_chans, img_size, cfg.seed), base,
                          crop_pct)

    def split(items, train: bool, limit, label):
        data = make(items, in_chans, transform_cls(cfg, pre, train))
        return seeded_subset(data, limit, cfg.seed, label)

    val = split(val_items, False, cfg.limit_val, "limit_val")
    used = val.indices if isinstance(val, Subset) else range(len(val_items))
    check_files([p for i in used for p in val_items[i] if isinstance(p, Path)], "val")
    return DataBundle(
        train=split(train_items, True, cfg.limit_train, "limit_train"),
        val=val,
        task=task, num_classes=len(classes), class_names=classes, preprocess=pre,
        batch_transform=build_batch_transform(cfg, task, len(classes)),
    )


def scan_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """``folder/images/NAME.*`` with ``folder/masks/NAME.png`` -> [(image, mask)]."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise VitkitError(f"{folder} needs images/ and masks/ subfolders (masks/NAME.png for each images/NAME.png|jpg)")
    pairs = []
    for image in _images_in(images_dir):
        mask = masks_dir / image.relative_to(images_dir).with_suffix(".png")
        if not mask.is_file():
            raise VitkitError(f"{image}: no mask {mask}; add it or remove the image")
        pairs.append((image, mask))
    if not pairs:
        raise VitkitError(f"{images_dir} holds no images (png, jpg, ...)")
    return pairs


def _seg_classes(root: Path, pairs: list[tuple[Path, Path]]) -> list[str]:
    """Class names from ``root/classes.txt`` (one per line), else 0..max mask value."""
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) < 2:
            raise VitkitError(f"{names_file} lists {len(names)} classes; list at least 2 (background first)")
        return names
    top = 0
    for _, mask_path in pairs:
        mask = read_mask(mask_path)
        valid = mask[mask != IGNORE_INDEX]
        top = max(top, int(valid.max()) if valid.numel() else 0)
    return [str(i) for i in range(max(top + 1, 2))]


def build_seg_folder(cfg: DataConfig, base: Preprocess | None = None) -> DataBundle:
    """Segmentation from images/ + masks/ (train/ + val/, or one folder split by seed)."""
    root = _root(cfg)
    dirs = _split_dirs(root)
    if dirs:
        train_p, val_p = scan_pairs(dirs[0]), scan_pairs(dirs[1])
    else:
        pairs = scan_pairs(root)
        train_idx, val_idx = _random_split(len(pairs), cfg.val_fraction, cfg.seed)
        train_p, val_p = [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]
    classes = _seg_classes(root, train_p + val_p)
    make = lambda p, chans, transform: SegFolderDataset(p, chans, len(classes), transform)  # noqa: E731
    return _folder_bundle(cfg, "segmentation", train_p, val_p, classes, make, SegmentationTransform, base,
                          cfg.crop_pct or 1.0)
