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


# ---------------------------------------------------------------- config values and --set strings
RUN_KEYS = ["epochs", "batch_size", "eval_batch_size", "grad_accum", "clip_grad", "label_smoothing", "workers",
            "threads", "eval_every", "tta", "final_tta", "seed", "precision", "optim.lr", "optim.weight_decay",
            "optim.betas", "optim.eps", "schedule.warmup_epochs", "schedule.warmup_steps", "schedule.min_lr_ratio",
            "schedule.time_budget_s", "ema.decay", "distill.alpha", "distill.tau", "data.img_size", "data.val_fraction",
            "data.crop_padding", "data.mixup_alpha", "data.cutmix_alpha", "data.random_erasing", "data.limit_train",
            "data.limit_val", "data.randaugment_ops", "data.randaugment_magnitude", "data.augment", "data.name",
            "model.depth", "model.embed_dim", "model.num_heads", "model.patch_size", "model.mlp_ratio",
            "model.drop_rate", "model.drop_path_rate", "model.img_size", "model.num_classes", "model.in_chans"]
NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 2, 0.5, 1.5, 100000, 1e-300, 1e300]))
VALUE_TEXT = st.one_of(NUMBERS.map(str), st.sampled_from(["nan", "inf", "-inf", "none", "", "abc", "[1,2]", "2,3",
                                                           "0.9", "true", "[", "{}", "1e999", "0x10"]),
                       st.text(max_size=12))


def _print_config(sets: list[str]) -> tuple[int, str, str]:
    return run_cli(["train", "--model", "vit_test", "--print-config", "--set", *sets])


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(lo: int = 1):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _interval(lo: float, hi: float, hi_open: bool = False):
    return lambda v: _finite(v) and lo <= v and (v < hi if hi_open else v <= hi)


# What a config that trains must hold (an oracle written from the maths, independent of vitkit.checks)
VALID = {
    "epochs": _count(), "batch_size": _count(), "eval_batch_size": _count(), "grad_accum": _count(),
    "clip_grad": lambda v: v is None or (_finite(v) and v > 0), "label_smoothing": _interval(0, 1, True),
    "workers": _count(0), "threads": _count(0), "eval_every": _count(),
    "tta": lambda v: v in ("none", "hflip", "shift", "flip-shift"),
    "final_tta": lambda v: v in ("same", "none", "hflip", "shift", "flip-shift"),
    "optim.lr": lambda v: _finite(v) and v > 0,
    "optim.weight_decay": lambda v: _finite(v) and v >= 0, "optim.eps": lambda v: _finite(v) and v > 0,
    "optim.betas": lambda v: len(v) == 2 and all(_interval(0, 1, True)(b) for b in v),
    "schedule.warmup_epochs": lambda v: _finite(v) and v >= 0,
    "schedule.warmup_steps": lambda v: v is None or _count(0)(v), "schedule.min_lr_ratio": _interval(0, 1),
    "schedule.time_budget_s": lambda v: v is None or (_finite(v) and v > 0),
    "ema.decay": _interval(0, 1, True), "distill.alpha": _interval(0, 1), "distill.tau": lambda v: _finite(v) and v > 0,
    "data.img_size": lambda v: v is None or (_count()(v) and v <= 4096), "data.val_fraction": _interval(0, 1),
    "data.crop_padding": _count(0), "data.mixup_alpha": lambda v: _finite(v) and v >= 0,
    "data.cutmix_alpha": lambda v: _finite(v) and v >= 0, "data.random_erasing": _interval(0, 1),
    "data.limit_train": lambda v: v is None or _count()(v),
    "data.limit_val": lambda v: v is None or _count()(v), "data.randaugment_ops": _count(0),
    "data.randaugment_magnitude": _count(0), "model.depth": _count(), "model.embed_dim": _count(),
    "model.num_heads": _count(), "model.patch_size": _count(), "model.mlp_ratio": lambda v: _finite(v) and v > 0,
    "model.drop_rate": _interval(0, 1, True), "model.drop_path_rate": _interval(0, 1, True),
    "model.num_classes": _count(), "model.in_chans": _count(),
}


def _lookup(cfg: dict, key: str):
    if key.startswith("model.") and isinstance(cfg.get("model"), str):  # preset name + its overrides
        cfg, key = cfg["model_overrides"], key[len("model."):]
        if key not in cfg:
            return 1 if "rate" not in key else 0.0  # the preset's own value
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _no_constant(name):
    raise AssertionError(f"{name} in the printed config")


def _assert_valid_or_one_line(code: int, out: str, err: str, key: str | None = None) -> None:
    if code != 0:
        assert_one_line_error(code, err, "train")
        return
    import json as _json

    cfg = _json.loads(out, parse_constant=_no_constant)  # valid JSON: no NaN or inf slipped through
    if key in VALID:
        value = _lookup(cfg, key)
        assert VALID[key](value), f"{key}={value!r} was accepted"


@FUZZ
@given(key=st.sampled_from(RUN_KEYS), value=VALUE_TEXT)
def test_any_set_value_is_accepted_in_range_or_one_line(key, value):
    _assert_valid_or_one_line(*_print_config([f"{key}={value}"]), key=key)


@FUZZ
@given(text=st.text(min_size=1, max_size=30))
def test_any_set_string_is_accepted_or_one_line(text):
    if text.startswith("-"):
        text = "x" + text  # argparse would read it as an option
    _assert_valid_or_one_line(*_print_config([text]))


# ---------------------------------------------------------------- config.json and latest.json contents
SMALL_INTS = st.one_of(st.integers(-3, 70), st.sampled_from([0, -1, 10**30]))
JSON = st.recursive(st.none() | st.booleans() | SMALL_INTS | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
META_PATHS = ["", "family", "config", "config.img_size", "config.patch_size", "config.embed_dim", "config.depth",
              "config.num_heads", "config.num_classes", "config.in_chans", "config.mlp_ratio", "config.drop_rate",
              "preprocess", "preprocess.mean", "preprocess.std", "preprocess.img_size", "preprocess.in_chans",
              "preprocess.interpolation", "preprocess.crop_pct", "class_names", "task", "weights_sha256"]


def _mutate(doc: dict, path: str, value, delete: bool):
    if not path:
        return value
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        if not isinstance(node.get(part), dict):
            return doc
        node = node[part]
    if delete:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(path=st.sampled_from(META_PATHS), value=JSON, delete=st.booleans(), raw=st.booleans(),
       junk=st.binary(min_size=1, max_size=8))
def test_fuzzed_model_config_json(tiny_model, tmp_path_factory, path, value, delete, raw, junk):
    import json as _json
    import shutil

    from PIL import Image

    folder = tmp_path_factory.mktemp("meta")
    model = folder / "model"
    shutil.copytree(tiny_model, model)
    doc = _mutate(_json.loads((model / "config.json").read_text()), path, value, delete)
    text = _json.dumps(doc).encode()
    (model / "config.json").write_bytes(junk + text if raw else text)  # raw: not valid JSON / not UTF-8
    Image.new("RGB", (8, 8), (5, 6, 7)).save(folder / "a.png")
    code, out, err = run_cli(["predict", str(model), str(folder / "a.png"), "--format", "json"])
    if code == 2:
        assert_one_line_error(code, err, "predict")
        return
    assert code == 0 and "Traceback" not in err, err
    rows = _json.loads(out, parse_constant=_no_constant)
    assert all(math.isfinite(t["prob"]) for r in rows for t in r["top"])


@FUZZ
@given(value=JSON, raw=st.booleans(), junk=st.binary(min_size=1, max_size=8))
def test_fuzzed_latest_json(tmp_path_factory, value, raw, junk):
    import json as _json

    from vitkit.engine.checkpoint import load_checkpoint, save_checkpoint
    from vitkit.registry import create_model

    run = tmp_path_factory.mktemp("ckpt")
    model = create_model("vit_test", img_size=8, patch_size=2)
    save_checkpoint(run, model, None, {"epoch": 1, "batch_in_epoch": 0, "global_step": 1})
    latest = run / "checkpoint" / "latest.json"
    doc = _json.loads(latest.read_text())
    if isinstance(value, dict):
        doc.update(value)
    else:
        doc[str(value)[:4] or "dir"] = value
    text = _json.dumps(doc).encode()
    latest.write_bytes(junk + text if raw else text)
    try:
        load_checkpoint(run, model)
    except VitkitError as exc:
        assert "\n" not in str(exc)
