"""Image files a careless user might upload: good ones in odd modes and bad ones of every kind."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte grayscale PNG whose header declares width x height (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


def encoded(mode: str, size=(20, 20), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A random image in PIL ``mode`` saved as ``fmt``."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))  # RGB
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))  # I;16
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# name -> (file bytes, words the one-line error must contain)
BAD_UPLOADS = {
    "notes.txt": (b"these are not pixels\n", "not an image file"),
    "empty.png": (b"", "empty"),
    "truncated.png": (encoded("RGB", (64, 64))[:90], "truncated"),
    "bomb.png": (png_declaring(50_000, 50_000), "2,500,000,000 pixels, above the limit"),
    "large.png": (png_declaring(12_000, 12_000), "12000x12000 = 144,000,000 pixels, above the limit"),
}

# name -> file bytes: unusual but valid images, converted to the model's channels
ODD_MODES = {
    "cmyk.jpg": encoded("CMYK", fmt="JPEG"),
    "grey16.png": encoded("I;16"),
    "rgba.png": encoded("RGBA"),
    "palette.png": encoded("P"),
    "grey_alpha.png": encoded("LA"),
    "bilevel.png": encoded("1"),
}
