"""Property-based fuzzing (hypothesis): whatever a user or a file holds, the outcome is success, a
per-file report with the documented exit code, or a one-line VitkitError (exit 2); never a
traceback and never NaN output with exit 0. Example counts are small so the suite stays fast."""
from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitkit.cli import main
from vitkit.data.images import check_image, read_image
from vitkit.errors import VitkitError

EXAMPLES = int(os.environ.get("VITKIT_FUZZ_EXAMPLES", "40"))  # raise it for a deeper run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_cli(argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an in-process ``vitkit`` call; any exception escaping is a failure."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, command: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vitkit {command}: error: "), err
    assert "Traceback" not in err


# ---------------------------------------------------------------- image headers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def png_bytes(draw):
    """PNG files with fuzzed IHDR fields, IDAT contents and truncation."""
    w = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1)))
    h = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1)))
    depth, colour = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])), draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
    raw = draw(st.binary(max_size=64)) if draw(st.booleans()) else zlib.compress(draw(st.binary(max_size=256)))
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + _chunk(b"IDAT", raw) + _chunk(b"IEND", b""))
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data


@st.composite
def other_image_bytes(draw):
    """Real small images of many formats and modes, then possibly truncated or bit-flipped."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I", "LA"]))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    from PIL import Image

    img = Image.new(mode if mode != "P" else "L", size).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("RGB").save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@FUZZ
@given(data=st.one_of(png_bytes(), other_image_bytes(), st.binary(max_size=128)), chans=st.sampled_from([1, 3]))
def test_any_bytes_read_or_one_line_error(tmp_path, data, chans):
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    for reader in (lambda: read_image(path, chans), lambda: check_image(path)):
        try:
            x = reader()
        except VitkitError as exc:
            assert "\n" not in str(exc) and "fuzz.img" in str(exc)
            continue
        if x is not None:
            assert x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] == chans


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vitkit.models.hub import save_pretrained
    from vitkit.registry import create_model

    path = tmp_path_factory.mktemp("fuzz") / "model"
    save_pretrained(create_model("vit_test", img_size=8, patch_size=2, num_classes=3, in_chans=3), path,
                    extra={"class_names": ["a", "b", "c"], "task": "classification",
                           "preprocess": {"img_size": 8, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3}})
    return path


@settings(FUZZ, max_examples=max(1, EXAMPLES * 3 // 8))
@given(files=st.lists(st.one_of(png_bytes(), other_image_bytes()), min_size=1, max_size=4))
def test_predict_on_fuzzed_files_reports_per_file(tiny_model, tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("imgs")
    for i, data in enumerate(files):
        (folder / f"{i}.png").write_bytes(data)
    code, out, err = run_cli(["predict", str(tiny_model), str(folder), "--format", "csv"])
    assert "Traceback" not in err
    rows = out.strip().splitlines()[1:]
    failed = [line for line in err.splitlines() if line.startswith("vitkit predict: error: ")]
    assert code == (1 if failed else 0), err
    assert len(rows) // 3 + len(failed) == len(files)  # every file: 3 rows (top-3) or one error line
    assert all(math.isfinite(float(r.rsplit(",", 1)[1])) for r in rows)
    if failed:
        assert f"{len(failed)} of {len(files)} inputs failed" in err
    assert np.isfinite([float(r.rsplit(",", 1)[1]) for r in rows]).all()
