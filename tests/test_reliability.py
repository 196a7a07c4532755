"""Messages that say what is true, and sizes and paths checked before any work (one line, exit 2)."""
from __future__ import annotations

import json

import pytest
import torch

from vitkit.cli import main


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A tiny untrained save_pretrained dir for the digits data (10 classes, 1 channel, 8 px)."""
    from vitkit.models.hub import save_pretrained
    from vitkit.registry import create_model

    path = tmp_path_factory.mktemp("rel") / "model"
    model = create_model("vit_test", img_size=8, patch_size=2, num_classes=10, in_chans=1)
    save_pretrained(model, path, extra={"class_names": [str(i) for i in range(10)], "task": "classification",
                                        "preprocess": {"img_size": 8, "in_chans": 1, "mean": [0.3], "std": [0.3]}})
    return path


EVAL = ["--data", "digits", "--set", "data.limit_val=20"]


def test_eval_json_is_the_only_stdout(digits_model, tmp_path, capsys):
    assert main(["eval", str(digits_model), *EVAL, "--json", "--out", str(tmp_path / "plots")]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out)  # the whole of stdout is one JSON document
    assert metrics["n"] == 20 and "confusion matrix plot" in err
    assert (tmp_path / "plots" / "confusion_val.png").is_file()


@pytest.mark.parametrize("size", ["0", "-1"])
def test_eval_and_predict_batch_size(digits_model, size, capsys):
    assert main(["eval", str(digits_model), *EVAL, "--batch-size", size]) == 2
    assert main(["predict", str(digits_model), "x.png", "--batch-size", size]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"vitkit eval: error: --batch-size must be >= 1, got {size}",
                   f"vitkit predict: error: --batch-size must be >= 1, got {size}"]


def test_eval_out_under_a_file(digits_model, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["eval", str(digits_model), *EVAL, "--out", str(tmp_path / "f" / "plots")]) == 2
    assert "lies under a file" in capsys.readouterr().err


@pytest.mark.parametrize("opset", ["1", "16", "26", "99"])
def test_export_opset_out_of_range_before_any_work(digits_model, tmp_path, opset, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(digits_model), "--opset", opset, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vitkit export: error: --opset {opset} is not supported; use 17..25 (default 18)"
    assert not out.exists()


def test_export_out_under_a_file(digits_model, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["export", str(digits_model), "--format", "torch-export", "--out", str(tmp_path / "f" / "m.pt2")]) == 2
    assert "cannot be created or written (a file in the way" in capsys.readouterr().err


@pytest.mark.parametrize("setting", [
    "eval_batch_size=0", "workers=-1", "optim.betas=2,3", "optim.betas=0.9", "optim.eps=-1", "optim.eps=0",
    "data.img_size=100000", "optim.weight_decay=-0.1", "schedule.min_lr_ratio=-0.5", "schedule.warmup_epochs=-1",
    "optim.lr=inf", "optim.lr=nan", "clip_grad=nan", "clip_grad=inf", "label_smoothing=1.5", "data.val_fraction=2",
    "data.mixup_alpha=-1", "threads=-2", "model.depth=0", "model.drop_rate=1.5", "model.img_size=-3",
    "model.embed_dim=0", "ema.decay=1", "data.crop_padding=-1", "data.limit_train=0", "model.num_classes=0",
])
def test_bad_config_value_is_one_line_before_any_work(setting, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "vit_test", "--set", setting, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    key = setting.split("=")[0]
    named = (f"vitkit train: error: {key}=", f"vitkit train: error: {key.removeprefix('model.')}=")
    assert err.startswith(named) and "out of range" in err and "\n" not in err, err
    assert not out.exists()  # refused before any work


# ---------------------------------------------------------------- published weights and their metadata
def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _predict_one_line(model_dir, tmp_path, capsys) -> str:
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("L", (8, 8), 77).save(img)
    assert main(["predict", str(model_dir), str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit predict: error: ") and "\n" not in err, err
    return err


def test_flipped_weight_bytes_are_refused(digits_model, tmp_path, capsys):
    model = _copy(digits_model, tmp_path / "m")
    meta = json.loads((model / "config.json").read_text())
    assert len(meta["weights_sha256"]) == 64
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-5] ^= 0x40  # one bit of one weight
    (model / "model.safetensors").write_bytes(bytes(data))
    assert "do not match the SHA-256" in _predict_one_line(model, tmp_path, capsys)
    assert main(["eval", str(model), *EVAL]) == 2
    assert "do not match the SHA-256" in capsys.readouterr().err


def test_weights_replaced_while_loading_are_read_again(digits_model, tmp_path):
    """A training run publishing an epoch between the reads of config.json and the weights."""
    from vitkit.registry import create_model, resolve

    model = _copy(digits_model, tmp_path / "m")
    source = resolve(str(model))  # config.json read now
    newer = create_model("vit_test", img_size=8, patch_size=2, num_classes=10, in_chans=1)
    newer.save_pretrained(model, extra={"class_names": [str(i) for i in range(10)]})
    loaded = create_model(source)
    for key, value in newer.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("edit, words", [
    (lambda m: b"\xff\xfe" + json.dumps(m).encode(), "is not UTF-8 text"),
    (lambda m: b"[1, 2]", "holds a JSON array, not a JSON object"),
    (lambda m: {**m, "config": ["abc"]}, "'config' must be an object"),
    (lambda m: {**m, "family": 3}, "'family' must be a model family name"),
    (lambda m: {**m, "class_names": "0123456789"}, "'class_names' must be a list of strings"),
    (lambda m: {**m, "class_names": ["a", "b"]}, "'class_names' has 2 names but the model predicts 10 classes"),
    (lambda m: {**m, "task": "segmentation"}, "task 'segmentation'"),
    (lambda m: {**m, "task": 7}, "'task' must be classification or segmentation"),
    (lambda m: {**m, "preprocess": [1]}, "'preprocess' must be an object"),
    (lambda m: {**m, "preprocess": {**m["preprocess"], "std": [0]}}, "std finite and > 0"),
    (lambda m: {**m, "preprocess": {**m["preprocess"], "mean": "abc"}}, "preprocess"),
    (lambda m: {**m, "preprocess": {**m["preprocess"], "std": [0.5, 0.5]}}, "std has 2 values"),
    (lambda m: {**m, "config": {**m["config"], "img_size": "abc"}}, "img_size"),
    (lambda m: {**m, "config": {**m["config"], "img_size": -3}}, "img_size"),
    (lambda m: {**m, "weights_sha256": "xyz"}, "'weights_sha256' must be 64 hex digits"),
])
def test_ill_typed_model_metadata_is_one_line(digits_model, tmp_path, capsys, edit, words):
    model = _copy(digits_model, tmp_path / "m")
    meta = json.loads((model / "config.json").read_text())
    new = edit(meta)
    (model / "config.json").write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
    assert words in _predict_one_line(model, tmp_path, capsys)


def test_run_killed_before_its_first_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "vit_test", "data": {}, "optim": {}, "epochs": 3}))
    err = _predict_one_line(run, tmp_path, capsys)
    assert "run dir with no saved model yet" in err and f"vitkit train --resume {run}" in err
    assert main(["eval", str(run)]) == 2
    assert "no saved model yet" in capsys.readouterr().err


@pytest.mark.parametrize("spoil, words", [
    (lambda s: {**s, "head.weight": torch.full_like(s["head.weight"], float("nan"))}, "NaN or inf values: head.weight"),
    (lambda s: {**s, "head.bias": s["head.bias"].long()}, "dtype mismatch: head.bias"),
    (lambda s: {k: v for k, v in s.items() if k != "head.bias"}, "missing: head.bias"),
])
def test_foreign_safetensors_checked_as_far_as_the_format_allows(tmp_path, spoil, words):
    from safetensors.torch import save_file

    from vitkit.errors import VitkitError
    from vitkit.registry import create_model

    state = create_model("vit_test", img_size=8, patch_size=2).state_dict()
    save_file(spoil(dict(state)), str(tmp_path / "w.safetensors"))
    with pytest.raises(VitkitError, match=words):
        create_model("vit_test", pretrained=str(tmp_path / "w.safetensors"), img_size=8, patch_size=2)
    header = tmp_path / "h.safetensors"
    header.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(VitkitError, match="corrupt or truncated"):
        create_model("vit_test", pretrained=str(header), img_size=8, patch_size=2)


# ---------------------------------------------------------------- checkpoints
def _checkpoint(tmp_path):
    from vitkit.engine.checkpoint import save_checkpoint
    from vitkit.registry import create_model

    model = create_model("vit_test", img_size=8, patch_size=2)
    save_checkpoint(tmp_path, model, None, {"epoch": 1, "batch_in_epoch": 0, "global_step": 1})
    return model, tmp_path / "checkpoint" / "latest.json"


@pytest.mark.parametrize("edit, words", [
    (lambda m: {**m, "files": {}}, "'files' must map every checkpoint file to its SHA-256; it is empty"),
    (lambda m: {**m, "dir": "../.."}, "'dir' must name a step_* folder"),
    (lambda m: {**m, "files": {"../../x": "0" * 64, **m["files"]}}, "leaves the checkpoint folder"),
    (lambda m: {**m, "files": {k: 5 for k in m["files"]}}, "is not 64 hex digits"),
    (lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "state.pt"}}, "does not list state.pt"),
])
def test_corrupt_checkpoint_index_is_one_line(tmp_path, edit, words):
    from vitkit.engine.checkpoint import load_checkpoint
    from vitkit.errors import VitkitError

    model, latest = _checkpoint(tmp_path)
    latest.write_text(json.dumps(edit(json.loads(latest.read_text()))))
    with pytest.raises(VitkitError, match="checkpoint index .* is corrupt") as info:
        load_checkpoint(tmp_path, model)
    assert words in str(info.value) and "\n" not in str(info.value)
    latest.write_bytes(b"\xff" + latest.read_bytes())
    with pytest.raises(VitkitError, match="is not UTF-8 text"):
        load_checkpoint(tmp_path, model)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_state_pt_is_refused_without_unsafe_advice(tmp_path, capsys):
    import hashlib
    import io
    import pickle

    from vitkit.engine.checkpoint import load_checkpoint
    from vitkit.errors import VitkitError

    model, latest = _checkpoint(tmp_path)
    manifest = json.loads(latest.read_text())
    state = tmp_path / "checkpoint" / manifest["dir"] / "state.pt"
    for protocol, words in ((2, "asks to run posix.system, which a safe load refuses"),
                            (pickle.DEFAULT_PROTOCOL, "holds objects a safe load refuses")):
        buf = io.BytesIO()
        torch.save({"epoch": _Evil()}, buf, pickle_protocol=protocol)
        state.write_bytes(buf.getvalue())
        manifest["files"]["state.pt"] = hashlib.sha256(buf.getvalue()).hexdigest()  # checksums pass: crafted
        latest.write_text(json.dumps(manifest))
        with pytest.raises(VitkitError) as info:
            load_checkpoint(tmp_path, model)
        text = str(info.value)
        assert words in text and "weights_only" not in text and "\n" not in text, text
    assert "Warning" not in capsys.readouterr().err
