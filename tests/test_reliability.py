"""Messages that say what is true, and sizes and paths checked before any work (one line, exit 2)."""
from __future__ import annotations

import json

import pytest

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
