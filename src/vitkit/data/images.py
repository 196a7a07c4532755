"""Reading image files safely: one way in (:func:`open_image`) for predict, explain, serve and folder data.

Every image is opened lazily first: PIL reads only the header, and an image that declares more
than the pixel limit (default :data:`DEFAULT_MAX_PIXELS`, about 100 Mpx; set
``VITKIT_MAX_IMAGE_PIXELS`` or call :func:`set_max_image_pixels`) is refused before any pixel is
decoded, so a decompression bomb (a tiny file declaring 50000 x 50000) costs no memory. A large
JPEG is decoded at a reduced scale (``draft``) when the caller says how big it needs it.
Grayscale <-> RGB conversion to the model's channel count is automatic (``L`` for 1 channel,
``RGB`` for 3; alpha is dropped). Every failure (missing, empty, truncated, not an image, too
large, unsupported mode, not a regular file) raises one ``VitkitError`` line naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 100_000_000  # width * height above which an image is refused unread
MAX_PIXELS_ENV = "VITKIT_MAX_IMAGE_PIXELS"
_MODES = {1: "L", 3: "RGB"}
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16-bit / float grayscale
_GRAY = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


def _limit_from_env() -> int:
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise VitkitError(
            f"{MAX_PIXELS_ENV}={text!r} is not a whole number of pixels; unset it or use e.g. 100000000") from None
    if value < 1:
        raise VitkitError(
            f"{MAX_PIXELS_ENV}={value} must be >= 1 (pixels); unset it for the default {DEFAULT_MAX_PIXELS}")
    return value


_max_pixels: int | None = None  # set_max_image_pixels(); None = the environment or the default
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS  # PIL warns above it and refuses above twice it


def set_max_image_pixels(limit: int | None) -> None:
    """Refuse images declaring more than ``limit`` pixels (None: back to the env/default limit)."""
    global _max_pixels
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise VitkitError(f"the image pixel limit must be a whole number >= 1, got {limit!r}")
    _max_pixels = limit
    max_image_pixels()


def max_image_pixels() -> int:
    """The pixel limit in force; PIL's own ``Image.MAX_IMAGE_PIXELS`` is kept equal to it."""
    limit = _max_pixels if _max_pixels is not None else _limit_from_env()
    Image.MAX_IMAGE_PIXELS = limit
    return limit


def _label(src) -> str:
    return "<image bytes>" if isinstance(src, (bytes, bytearray, io.IOBase)) else str(src)


def _check_regular_file(path: Path) -> None:
    """A regular file, or a VitkitError saying what it is instead (never opens a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VitkitError(f"{path}: symbolic link loop; fix or remove the link") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            what = "broken symbolic link" if os.path.islink(path) else "no such file"
            raise VitkitError(f"{path}: {what}; check the path") from None
        raise VitkitError(f"{path}: cannot read ({exc.strerror}); check its permissions") from None
    if stat.S_ISDIR(mode):
        raise VitkitError(f"{path}: a folder, not an image file; pass image files, a folder or a glob")
    if not stat.S_ISREG(mode):
        raise VitkitError(f"{path}: not a regular file (a FIFO, socket or device); pass image files only")
    if os.stat(path).st_size == 0:
        raise VitkitError(f"{path}: empty file (0 bytes); re-save or remove it")


@contextlib.contextmanager
def _pil_warnings():
    """PIL's notes (palette transparency, EXIF, the bomb warning we act on ourselves) are silenced;
    a warning about a truncated or corrupt file is raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("error", message=".*(runcated|orrupt)", category=UserWarning)
        yield


def _open_lazy(src, label: str, limit: int) -> Image.Image:
    """PIL's lazy open (header only), refusing more than ``limit`` declared pixels."""
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise VitkitError(f"{label}: empty (0 bytes); send an image file")
        src = io.BytesIO(src)
    elif not isinstance(src, io.IOBase):
        src = Path(src)
        _check_regular_file(src)
    try:
        with _pil_warnings():
            img = Image.open(src)
    except Image.DecompressionBombError as exc:  # PIL's own check (above twice its limit) came first
        raise _too_large(label, None, limit, str(exc)) from None
    except UnidentifiedImageError:
        raise VitkitError(
            f"{label}: not an image file PIL can read (png, jpg, bmp, ...); remove it or convert it") from None
    except (OSError, SyntaxError, ValueError, EOFError, UserWarning) as exc:
        raise VitkitError(f"{label}: unreadable image header ({_short(exc)}); re-save or remove it") from None
    w, h = img.size
    if w < 1 or h < 1 or w * h > limit:
        img.close()
        if w * h > limit:
            raise _too_large(label, img.size, limit)
        raise VitkitError(f"{label}: declares an empty size {w}x{h}")
    return img


def _too_large(label: str, size, limit: int, pil_message: str = "") -> VitkitError:
    if size:
        declared = f"declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
    else:
        found = re.search(r"\((\d+) pixels\)", pil_message)
        declared = f"declares {int(found.group(1)):,} pixels" if found else "declares too many pixels"
    return VitkitError(f"{label}: {declared}, above the limit of {limit:,} (a decompression bomb or a huge scan); "
                       f"shrink it, or raise the limit with {MAX_PIXELS_ENV}=N")


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def open_image(src, mode: str | None = None, *, max_pixels: int | None = None,
               size_hint: int | None = None) -> Image.Image:
    """A decoded PIL image from a path, bytes or a binary file, converted to ``mode`` if given.

    The header is read first and more than ``max_pixels`` (default :func:`max_image_pixels`)
    declared pixels is refused before decoding. With ``size_hint`` (the side the caller
    resizes to) a large JPEG decodes at the smallest DCT scale >= that size (``draft``) and
    any other large image is reduced by an integer factor right after decoding.
    """
    label, limit = _label(src), max_pixels or max_image_pixels()
    img = _open_lazy(src, label, limit)
    try:
        if size_hint and img.format == "JPEG" and mode in ("L", "RGB"):
            img.draft(mode, (size_hint, size_hint))
        with _pil_warnings():
            img.load()
        if size_hint:
            factor = min(img.size) // (2 * size_hint)
            img = img.reduce(factor) if factor >= 2 and img.mode not in _HIGH_DEPTH + ("P", "1") else img
        return _convert(img, mode, label) if mode else img
    except VitkitError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, UserWarning) as exc:
        raise VitkitError(f"{label}: unreadable or truncated image ({_short(exc)}); re-save or remove it") from None


def _convert(img: Image.Image, mode: str, label: str) -> Image.Image:
    """``img`` in ``mode`` (L or RGB): palettes/alpha via RGBA, 16-bit/float grayscale rescaled."""
    if img.mode in _HIGH_DEPTH:
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise VitkitError(f"{label}: float image holds NaN or inf pixels; re-save it as 8-bit")
        span = max(float(arr.max() - arr.min()), 1e-12)
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), "L")
    try:
        if img.mode not in ("1", "L", "RGB", "RGBA", "CMYK", "YCbCr"):  # palettes, alpha variants, ...
            img = img.convert("RGBA")
        return img if img.mode == mode else img.convert(mode)
    except (ValueError, OSError) as exc:
        raise VitkitError(f"{label}: image mode {img.mode} cannot be converted ({_short(exc)}); "
                          "re-save it as RGB or grayscale") from None


def check_image(path, max_pixels: int | None = None) -> None:
    """Cheap validity check without decoding pixels: a readable header, a sane declared size and,
    where the format allows (PNG chunk CRCs, GIF/TIFF structure), ``verify()``."""
    img = _open_lazy(Path(path), str(path), max_pixels or max_image_pixels())
    try:
        img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a corrupt file
        raise VitkitError(f"{path}: corrupt or truncated image ({_short(exc)}); re-save or remove it") from None
    finally:
        img.close()


def image_header(path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) read from the header only."""
    img = _open_lazy(Path(path), str(path), max_image_pixels())
    with img:
        return img.mode, img.size


def is_grayscale_mode(mode: str) -> bool:
    return mode in _GRAY


def read_image(path, in_chans: int, size_hint: int | None = None) -> torch.Tensor:
    """An image file -> uint8 tensor (C, H, W) with C = ``in_chans`` (1 or 3)."""
    if in_chans not in _MODES:
        raise VitkitError(f"{_label(path)}: the model expects {in_chans} channels, "
                          "but images can be read as 1 (grayscale) or 3 (RGB) only")
    arr = np.asarray(open_image(path, _MODES[in_chans], size_hint=size_hint), dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (C, H, W)


def read_mask(path) -> torch.Tensor:
    """A class-index PNG mask -> LongTensor (H, W); palette/grayscale values are class ids."""
    img = open_image(Path(path))
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise VitkitError(
            f"{path}: a mask must be a single-channel PNG of class indices (mode L or P), got mode {img.mode}")
    return torch.from_numpy(np.asarray(img).astype(np.int64))


def load_image(path, pre: Preprocess) -> torch.Tensor:
    """An image file (or bytes) -> the model input (C, H, W), resized and normalised by ``pre``
    (predict, explain, export, serve)."""
    return pre(read_image(path, pre.in_chans, size_hint=max(pre.resize_size)))


def _listable(path: Path, root: Path) -> bool:
    """Visible entries a folder listing reports: files and anything that is not a plain folder
    (FIFOs, broken links, link loops), plus folders named like images, so each is reported."""
    if any(s.startswith(".") for s in path.relative_to(root).parts):
        return False
    try:
        return not path.is_dir() or is_image_name(path)
    except OSError:
        return True


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _listable(p, folder))


def list_image_files(spec: str) -> list[Path]:
    """An image path, a folder (recursive, all visible files) or a glob -> sorted list of files.

    Non-image entries inside a folder (other files, FIFOs, broken links, folders named
    ``*.png``) are listed on purpose: :func:`load_image` reports each one.
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
    if path.is_symlink() or path.exists():
        return [path]  # a FIFO, a broken link, ...: reported per file
    raise VitkitError(f"{spec}: no such file or folder; pass an image, a folder or a glob")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS

