"""Small Fashion-MNIST stand-ins: gz IDX files in the real format, so tests need no data set installed."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_MAGIC = {3: 0x803, 1: 0x801}  # unsigned-byte IDX with 3 (images) or 1 (labels) dims


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = True) -> Path:
    """Write ``array`` as an unsigned-byte IDX file (gzip'd unless ``compress`` is false)."""
    magic = IDX_MAGIC[array.ndim] if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fashion_mnist(root: Path, n_train: int = 300, n_test: int = 150) -> Path:
    """The four Fashion-MNIST files under ``root``: 28x28 images, labels 0..9 cycling, a class-dependent
    bright band on faint noise (so a model can learn the classes and seg-canvas finds silhouettes)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 2 * y : 2 * y + 8, 4:24] = 200
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root
