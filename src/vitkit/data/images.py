"""Reading image files: for ``predict``/``explain`` (:func:`load_image`) and folder data sets.

Grayscale <-> RGB conversion to the model's channel count is automatic (``L`` for 1 channel,
``RGB`` for 3; alpha is dropped). Every failure names the file and raises ``VitkitError``.
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitkit.errors import VitkitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_MODES = {1: "L", 3: "RGB"}


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path`` with PIL, or raise a VitkitError naming it."""
    if not path.exists():
        raise VitkitError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise VitkitError(f"{path}: not a file; pass an image file, a folder or a glob")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise VitkitError(f"{path}: not an image file PIL can read (png, jpg, bmp, ...); remove it or convert it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise VitkitError(f"{path}: unreadable or truncated image ({exc}); re-save or remove it") from None
    return img


def read_image(path, in_chans: int) -> torch.Tensor:
    """An image file -> uint8 tensor (C, H, W) with C = ``in_chans`` (1 or 3)."""
    path = Path(path)
    if in_chans not in _MODES:
        raise VitkitError(f"{path}: the model expects {in_chans} channels, but images can be read as 1 (grayscale) or 3 (RGB) only")
    img = _open(path)
    if img.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit / float grayscale: rescale to 0..255
        arr = np.asarray(img, dtype=np.float64)
        span = max(arr.max() - arr.min(), 1e-12)
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), "L")
    arr = np.asarray(img.convert(_MODES[in_chans]), dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (C, H, W)


def read_mask(path) -> torch.Tensor:
    """A class-index PNG mask -> LongTensor (H, W); palette/grayscale values are class ids."""
    path = Path(path)
    img = _open(path)
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise VitkitError(f"{path}: a mask must be a single-channel PNG of class indices (mode L or P), got mode {img.mode}")
    return torch.from_numpy(np.asarray(img).astype(np.int64))


def load_image(path, in_chans: int, img_size: int, mean, std) -> torch.Tensor:
    """An image file -> normalised float tensor (C, img_size, img_size) for predict/explain."""
    from torchvision.transforms.v2 import functional as F

    image = read_image(path, in_chans)  # (C, H, W) uint8
    if image.shape[-2:] != (img_size, img_size):
        image = F.resize(image, [img_size, img_size], antialias=True)
    image = image.float() / 255.0
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    if mean_t.numel() not in (1, in_chans) or std_t.numel() not in (1, in_chans):
        raise VitkitError(f"mean/std have {mean_t.numel()} values but the model expects {in_chans} channels")
    return (image - mean_t) / std_t


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts))


def list_image_files(spec: str) -> list[Path]:
    """An image path, a folder (recursive, all visible files) or a glob -> sorted list of files.

    Non-image files inside a folder are listed on purpose: :func:`load_image` reports each one.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = _visible_files(path)
        if not files:
            raise VitkitError(f"{spec}: the folder holds no files; pass a folder with images")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise VitkitError(f"{spec}: the pattern matches no files; check the glob")
        return files
    raise VitkitError(f"{spec}: no such file or folder; pass an image, a folder or a glob")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS
