"""Fashion-MNIST (Xiao et al. 2017): 60k train / 10k test, 28x28 grayscale, 10 classes.

Read from the four gz IDX files (Debian package ``dataset-fashion-mnist`` installs them in
/usr/share/datasets/fashion-mnist) with gzip + numpy; kept in memory as uint8 tensors.
"""
from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from vitkit.data.config import DataBundle, DataConfig
from vitkit.data.datasets import ArrayDataset, presize, seeded_subset
from vitkit.data.transforms import ClassificationTransform, build_batch_transform, data_preprocess, uint8_stats
from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
NATIVE_SIZE = 28
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte IDX with 3 (images) or 1 (labels) dims
_HOW = (
    "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise VitkitError(f"{path}: corrupt or truncated gzip file ({exc}); download it again") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (optionally gzip'd) of unsigned bytes with ``ndim`` dims -> uint8 array."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != _MAGIC[ndim]:
        raise VitkitError(f"{path}: not an IDX file with {ndim} dims (bad magic number); download it again")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise VitkitError(
            f"{path}: truncated or padded IDX file ({len(data)} bytes, expected {expected}); download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise VitkitError(f"Fashion-MNIST file {stem}.gz not found in {folder}; {_HOW}")


def resolve_dir(data_dir: str | None) -> Path:
    folder = Path(data_dir or DEFAULT_DIR).expanduser()
    if not folder.is_dir():
        raise VitkitError(f"Fashion-MNIST folder {folder} does not exist; {_HOW}")
    return folder


@functools.lru_cache(maxsize=4)
def _load_split_cached(images_path: Path, labels_path: Path, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise VitkitError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; re-download both")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise VitkitError(f"{labels_path}: label {labels.max()} out of range 0..9; download it again")
    images_t = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
    return images_t, torch.from_numpy(labels.astype(np.int64))


def load_split(data_dir: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and labels (N,) of split 'train' or 'test' (cached in memory)."""
    folder = resolve_dir(data_dir)
    paths = [find_file(folder, stem) for stem in FILES[split]]
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return _load_split_cached(paths[0], paths[1], stamp)


def build_fashion_mnist(cfg: DataConfig, base: Preprocess | None = None) -> DataBundle:
    """Train = the 60k train split, val = the 10k test split (``val_fraction`` is not used;
    ``base``: see build_data)."""
    train_x, train_y = load_split(cfg.data_dir, "train")
    val_x, val_y = load_split(cfg.data_dir, "test")
    mean, std = uint8_stats(train_x)
    pre = data_preprocess(Preprocess(cfg.img_size or NATIVE_SIZE, 1, mean, std), base)
    train_x, val_x = presize(train_x, pre), presize(val_x, pre)
    train = ArrayDataset(train_x, train_y, ClassificationTransform(cfg, pre, True))
    val = ArrayDataset(val_x, val_y, ClassificationTransform(cfg, pre, False))
    return DataBundle(
        train=seeded_subset(train, cfg.limit_train, cfg.seed, "limit_train"),
        val=seeded_subset(val, cfg.limit_val, cfg.seed, "limit_val"),
        task="classification",
        num_classes=10,
        class_names=list(CLASS_NAMES),
        preprocess=pre,
        batch_transform=build_batch_transform(cfg, "classification", 10),
    )
