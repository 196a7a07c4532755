"""Safe image opening (vitkit.data.images): pixel limit before decoding, per-file errors, odd modes."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.data import DataConfig, build_data
from vitkit.data.images import (
    DEFAULT_MAX_PIXELS,
    check_image,
    list_image_files,
    load_image,
    max_image_pixels,
    open_image,
    read_image,
    set_max_image_pixels,
)
from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` 8-bit grayscale pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _save(path, mode="RGB", size=(12, 10), value=100, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode not in ("RGB", "RGBA", "CMYK") else (value,) * len(mode)).save(path, **kw)
    return path


@pytest.fixture
def pixel_limit():
    yield
    set_max_image_pixels(None)


def test_bomb_refused_from_the_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50000, 50000))
    assert bomb.stat().st_size < 100
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    too_big = r"bomb.png: declares (50000x50000 = )?2,500,000,000 pixels, above the limit of 100,000,000"
    with pytest.raises(VitkitError, match=too_big):
        open_image(bomb, "RGB")
    with pytest.raises(VitkitError, match="above the limit"):
        check_image(bomb)
    with pytest.raises(VitkitError, match="above the limit"):
        open_image(bomb.read_bytes(), "L")  # bytes, as a web upload arrives


def test_pixel_limit_is_configurable(tmp_path, pixel_limit, monkeypatch):
    img = _save(tmp_path / "a.png", size=(40, 30))
    set_max_image_pixels(1199)
    assert Image.MAX_IMAGE_PIXELS == 1199
    with pytest.raises(VitkitError, match="40x30 = 1,200 pixels, above the limit of 1,199"):
        read_image(img, 3)
    assert open_image(img, "RGB", max_pixels=1200).size == (40, 30)
    set_max_image_pixels(None)
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(VitkitError, match="limit of 1,000"):
        read_image(img, 1)
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(VitkitError, match="VITKIT_MAX_IMAGE_PIXELS='lots' is not a whole number"):
        read_image(img, 1)
    with pytest.raises(VitkitError, match=">= 1"):
        set_max_image_pixels(0)


def test_large_jpeg_decodes_at_reduced_scale(tmp_path):
    big = _save(tmp_path / "big.jpg", size=(800, 640), value=90, quality=90)
    assert open_image(big, "RGB").size == (800, 640)
    small = open_image(big, "RGB", size_hint=100)
    assert small.size == (200, 160)  # DCT scale 1/4: the smallest >= 100 on both sides
    x = load_image(big, Preprocess(100, 3, (0.5,), (0.5,)))
    assert x.shape == (3, 100, 100)
    # the whole, undrafted decode resized gives the same flat image (value 90 everywhere)
    torch.testing.assert_close(x, torch.full_like(x, 90 / 255 * 2 - 1), atol=4 / 255 * 2, rtol=0)


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    (lambda p: p.write_text("hello"), "not an image file"),
    (lambda p: p.write_bytes(png_header_only(0, 5)), "not an image file"),
    (lambda p: p.mkdir(), "a folder, not an image file"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: os.symlink(p, p), "symbolic link loop"),
    (lambda p: os.symlink(p.parent / "gone.png", p), "broken symbolic link"),
])
def test_each_bad_file_is_one_line(tmp_path, make, words):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(VitkitError, match=words) as info:
        read_image(path, 3)
    assert "\n" not in str(info.value) and "x.png" in str(info.value)


def test_truncated_png_and_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for name in ("t.png", "t.jpg"):
        full = tmp_path / f"full_{name}"
        Image.fromarray(noise).save(full)
        cut = tmp_path / name
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(VitkitError, match=f"{name}: unreadable or truncated"):
            read_image(cut, 1)
    with pytest.raises(VitkitError, match="t.png: corrupt or truncated"):
        check_image(tmp_path / "t.png")  # found without decoding pixels


@pytest.mark.parametrize("mode, value", [("P", 3), ("LA", (9, 200)), ("I;16", 4000), ("I", 70000), ("F", 0.25),
                                         ("CMYK", 20), ("1", 1), ("RGBA", 50), ("PA", (3, 200)), ("YCbCr", (9, 9, 9))])
def test_odd_modes_read_or_refuse_in_one_line(tmp_path, mode, value):
    img = Image.new(mode, (6, 5), value)
    path = tmp_path / ("x.tif" if mode in ("F", "I", "I;16", "CMYK", "YCbCr", "LA", "PA") else "x.png")
    if mode == "PA":
        path = tmp_path / "x.png"
        img = Image.new("P", (6, 5), 3)
        img.info["transparency"] = 3  # a palette with a transparent entry
    img.save(path)
    for chans in (1, 3):
        try:
            x = read_image(path, chans)
        except VitkitError as exc:
            assert "\n" not in str(exc) and "x." in str(exc)
            continue
        assert x.shape == (chans, 5, 6) and x.dtype == torch.uint8


def test_predict_reports_bad_files_and_predicts_the_rest(tmp_path, capsys):
    from vitkit.models.hub import save_pretrained
    from vitkit.registry import create_model

    model = create_model("vit_test", img_size=8, patch_size=2, num_classes=3, in_chans=1)
    preprocess = {"img_size": 8, "in_chans": 1, "mean": [0.5], "std": [0.5]}
    save_pretrained(model, tmp_path / "m",
                    extra={"class_names": ["a", "b", "c"], "task": "classification", "preprocess": preprocess})
    imgs = tmp_path / "imgs"
    _save(imgs / "good1.png", "L", (8, 8), 10)
    (imgs / "bomb.png").write_bytes(png_header_only(50000, 50000))
    _save(imgs / "good2.jpg", "RGB", (30, 20), 200)
    (imgs / "dir.png").mkdir()
    os.mkfifo(imgs / "pipe.png")
    os.symlink(imgs / "loop.png", imgs / "loop.png")
    _save(imgs / "new\nline.png", "L", (8, 8), 99)
    listed = list_image_files(str(imgs))
    assert {p.name for p in listed} == {"good1.png", "bomb.png", "good2.jpg", "dir.png", "pipe.png", "loop.png",
                                        "new\nline.png"}
    assert main(["predict", str(tmp_path / "m"), str(imgs), "--batch-size", "2"]) == 1
    out, err = capsys.readouterr()
    table = out.splitlines()
    assert len(table) == 4 and all("good" in row or "new\\nline.png" in row for row in table[1:])
    assert "5 of 7 inputs failed" not in err and "4 of 7 inputs failed" in err
    for name, words in (("bomb.png", "above the limit"), ("dir.png", "a folder"), ("pipe.png", "not a regular file"),
                        ("loop.png", "link loop")):
        assert any(name in line and words in line for line in err.splitlines()), name
    assert "Traceback" not in err
    for bad in ("0", "-1"):
        assert main(["predict", str(tmp_path / "m"), str(imgs / "good1.png"), "--batch-size", bad]) == 2
        assert "--batch-size must be >= 1" in capsys.readouterr().err


def _imagefolder(root, split_dirs=("train", "val"), n=4):
    rng = np.random.default_rng(0)
    for split in split_dirs:
        for cls in ("cat", "dog"):
            for i in range(n):
                arr = rng.integers(0, 255, (8, 8), dtype=np.uint8)
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return root


def test_corrupt_val_image_found_before_training(tmp_path):
    root = _imagefolder(tmp_path / "d")
    good = root / "val" / "dog" / "3.png"
    good.write_bytes(good.read_bytes()[:-30])  # truncated: IEND and part of IDAT gone
    with pytest.raises(VitkitError, match=r"val data: .*3.png: corrupt or truncated"):
        build_data(DataConfig(name="imagefolder", data_dir=str(root)))
    assert len(build_data(DataConfig(name="imagefolder", data_dir=str(root), limit_val=1, seed=1)).val) == 1


def test_single_class_folder_is_refused(tmp_path):
    root = tmp_path / "one"
    _save(root / "cat" / "0.png", "L", (8, 8))
    _save(root / "cat" / "1.png", "L", (8, 8))
    with pytest.raises(VitkitError, match="one class folder .*at least 2 classes"):
        build_data(DataConfig(name="imagefolder", data_dir=str(root)))


def test_worker_error_reaches_the_user_as_its_own_line(tmp_path, capsys):
    root = _imagefolder(tmp_path / "d", n=8)
    (root / "train" / "cat" / "5.png").write_text("not a png")
    argv = ["train", "--model", "vit_test", "--data", "imagefolder", "--data-dir", str(root), "--epochs", "1",
            "--out", str(tmp_path / "run"), "--set", "model.patch_size=2", "batch_size=4", "workers=2",
            "tensorboard=false", "progress=false", "threads=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit train: error: ") and "5.png: not an image file" in err
    assert "\n" not in err and "Caught" not in err and "Traceback" not in err


def test_open_image_reads_bytes_and_file_objects(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (7, 3), (1, 2, 3)).save(buf, format="PNG")
    assert open_image(buf.getvalue(), "L").size == (7, 3)
    assert np.asarray(open_image(io.BytesIO(buf.getvalue()), "RGB"))[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(VitkitError, match="<image bytes>: empty"):
        open_image(b"", "RGB")
