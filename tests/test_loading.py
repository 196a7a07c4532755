"""One loading path (``create_model`` for a name, a save dir, a run dir) and the Preprocess object."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import vitkit
from vitkit.errors import VitkitError
from vitkit.models.vit import VisionTransformer, ViTConfig
from vitkit.preprocess import Preprocess
from vitkit.registry import resolve

SRC = Path(vitkit.__file__).parent


def _saved(tmp_path, name="vit_test", **overrides):
    torch.manual_seed(0)
    model = vitkit.create_model(name, **overrides).eval()
    model.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": name}))  # the run's own config
    return model


def test_name_save_dir_and_run_dir_give_identical_outputs(tmp_path):
    model = _saved(tmp_path)
    x = torch.randn(2, 3, 16, 16)
    loaded = [vitkit.create_model(tmp_path / "run" / "model"), vitkit.create_model(str(tmp_path / "run")),
              vitkit.create_model("vit_test", pretrained=tmp_path / "run"),
              vitkit.create_model("vit_test", pretrained=tmp_path / "run" / "model" / "model.safetensors")]
    with torch.no_grad():
        for again in loaded:
            assert type(again) is VisionTransformer and again.config == model.config
            torch.testing.assert_close(again.eval()(x), model(x), rtol=0, atol=0)


def test_resolve_names_class_config_and_weights(tmp_path):
    _saved(tmp_path)
    fresh, run = resolve("vit_test"), resolve(tmp_path / "run")
    assert fresh.cls is run.cls is VisionTransformer and fresh.weights is None
    assert run.weights == tmp_path / "run" / "model" / "model.safetensors"
    assert run.config == fresh.config and run.meta["family"] == "vit"
    assert resolve(run) is run


@pytest.mark.parametrize("spec, match", [
    ("vit_tset", "unknown model 'vit_tset' \\(did you mean vit_test"),
    ("no/such/run", "path not found: no/such/run"),
    ("EMPTY_DIR", "is a folder but not a model"),
    ("TEXT_FILE", "is not a model file"),
    ("WEIGHTS", "holds weights but no config"),
])
def test_bad_spec_is_one_line_error(tmp_path, spec, match):
    _saved(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    spec = {"EMPTY_DIR": str(tmp_path / "empty"), "TEXT_FILE": str(tmp_path / "notes.txt"),
            "WEIGHTS": str(tmp_path / "run" / "model" / "model.safetensors")}.get(spec, spec)
    with pytest.raises(VitkitError, match=match) as info:
        vitkit.create_model(spec)
    assert "\n" not in str(info.value)


def test_pretrained_must_hold_weights():
    with pytest.raises(VitkitError, match="pretrained='vit_test' holds no weights"):
        vitkit.create_model("vit_test", pretrained="vit_test")


def test_unknown_family_in_saved_config(tmp_path):
    _saved(tmp_path)
    cfg = tmp_path / "run" / "model" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "family": "vitt"}))
    with pytest.raises(VitkitError, match="unknown model family 'vitt' \\(did you mean vit"):
        vitkit.create_model(tmp_path / "run")


def test_preprocess_round_trips_through_config_json(tmp_path):
    model = vitkit.create_model("vit_test")
    model.preprocess = Preprocess(16, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", 0.875)
    model.class_names = list("abcde")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["preprocess"] == {"img_size": 16, "in_chans": 3, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                                   "interpolation": "bicubic", "crop_pct": 0.875}
    assert saved["class_names"] == list("abcde") and saved["task"] == "classification"
    again = vitkit.create_model(tmp_path)
    assert again.preprocess == model.preprocess and again.class_names == model.class_names
    bigger = vitkit.create_model(tmp_path, img_size=32)  # the input size follows the model
    assert bigger.preprocess.img_size == (32, 32) and bigger.preprocess.mean == (0.1, 0.2, 0.3)


def _legacy_dir(tmp_path, extras: dict) -> Path:
    """A config.json as older vitkit versions wrote it, written literally next to real weights."""
    config = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 3, "embed_dim": 32, "depth": 1,
              "num_heads": 2, "mlp_ratio": 2.0}
    VisionTransformer(ViTConfig(**config)).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"family": "vit", "config": config, **extras}))
    return tmp_path


def test_legacy_config_with_preprocess_dict_loads(tmp_path):
    path = _legacy_dir(tmp_path, {"class_names": ["a", "b", "c"], "task": "classification",
                                  "preprocess": {"img_size": 16, "in_chans": 1, "mean": [0.2], "std": [0.3]}})
    model = vitkit.create_model(path)
    assert model.preprocess == Preprocess((16, 16), 1, (0.2,), (0.3,), "bilinear", 1.0)
    assert model.class_names == ["a", "b", "c"] and model.config.depth == 1


def test_legacy_config_without_metadata_loads(tmp_path):
    model = vitkit.create_model(_legacy_dir(tmp_path, {}))
    assert model.preprocess == Preprocess(16, 1, (0.5,), (0.5,)) and model.class_names is None


def test_preprocess_is_resize_then_normalise():
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    pre = Preprocess(16, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    sized = TF.center_crop(TF.resize(image, [16], antialias=True), [16, 16])  # shorter side 16, aspect kept
    expected = (sized.float() / 255.0 - mean) / std
    torch.testing.assert_close(pre(image), expected, rtol=0, atol=0)
    torch.testing.assert_close(pre.denormalize(pre(image)[None])[0], expected * std + mean, rtol=0, atol=1e-6)
    same = Preprocess((20, 24), 3)  # already at size: no resampling, just normalise; float images are 0..1
    torch.testing.assert_close(same(image.float() / 255.0), same(image), rtol=0, atol=1e-6)


def test_crop_pct_resizes_then_center_crops():
    image = torch.arange(16 * 16, dtype=torch.float32).view(1, 16, 16) / 256.0
    pre = Preprocess(8, 1, mean=0.0, std=1.0, crop_pct=0.5)  # 8 / 0.5 = 16: no resampling, centre 8x8
    torch.testing.assert_close(pre(image), image[:, 4:12, 4:12], rtol=0, atol=0)
    wide = Preprocess((4, 6), 1, crop_pct=0.5).resize(torch.zeros(1, 3, 5))
    assert wide.shape == (1, 4, 6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean=(0.1, 0.2)), "mean has 2 values but the model expects 3 channels"),
    (dict(std=0.0), "std finite and > 0"),
    (dict(mean=float("nan")), "mean must be finite"),
    (dict(crop_pct=0.0), "crop_pct must be in"),
    (dict(interpolation="lanczos"), "unknown interpolation 'lanczos'"),
    (dict(img_size=(8, 8, 8)), "img_size must be"),
])
def test_bad_preprocess_values_are_errors(kwargs, match):
    with pytest.raises(VitkitError, match=match):
        Preprocess(**{"img_size": 8, "in_chans": 3, **kwargs})


def test_unknown_preprocess_key_in_config_json():
    with pytest.raises(VitkitError, match="unknown preprocess field"):
        Preprocess.from_dict({"size": 8}, ViTConfig())


def test_loading_modules_import_at_module_top_only():
    """registry, models.base, models.catalog and models.hub import one way, at the top."""
    for rel in ("registry.py", "models/base.py", "models/catalog.py", "models/hub.py", "preprocess.py", "io.py"):
        tree = ast.parse((SRC / rel).read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            inner = [n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inner, f"{rel}: {func.name} imports inside the function"


def test_import_vitkit_stays_light():
    """``import vitkit`` (and so ``vitkit --help``) does not import torch; the API loads on use."""
    code = "import sys, vitkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    from vitkit import registry

    assert vitkit.create_model is registry.create_model and vitkit.list_models is registry.list_models
    with pytest.raises(AttributeError, match="no attribute 'load_model'"):
        vitkit.load_model  # noqa: B018
