"""`vitkit train | eval | predict` end to end on tiny models and data (in-process CLI)."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from vitkit.cli import main
from vitkit.config import to_dict
from vitkit.registry import get_config

TINY = ["--set", "model.img_size=8", "model.patch_size=2", "data.limit_train=64", "data.limit_val=40",
        "batch_size=16", "tensorboard=false", "progress=false", "threads=1", "schedule.warmup_steps=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--model", "vit_test", "--epochs", "2", *TINY, "tensorboard=true", "--out", str(out)])
    assert rc == 0
    return out


def test_train_run_dir_layout(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model_name"] == "vit_test" and cfg["epochs"] == 2 and cfg["data"]["img_size"] == 8
    # the full model config as built: the --set fields, and classes / channels from the data
    assert cfg["model"] == to_dict(get_config("vit_test", img_size=8, patch_size=2, num_classes=10, in_chans=1))
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert any((run_dir / "tb").iterdir())
    for name in ("plots/curves.png", "plots/confusion.png", "metrics.json", "model/config.json"):
        assert (run_dir / name).is_file(), name
    assert Image.open(run_dir / "plots" / "curves.png").size[0] > 100


def test_eval_prints_report(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    text = capsys.readouterr().out
    metrics = json.loads(text[: text.rindex("}") + 1])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["top1"] == saved["top1"] and metrics["confusion"] == saved["confusion"]
    assert sum(map(sum, metrics["confusion"])) == 40 and metrics["top5"] >= metrics["top1"]
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "confusion matrix" in out and (run_dir / "plots" / "confusion_val.png").is_file()


def _write_images(folder, n=3):
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for i in range(n):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"digit_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_formats_and_per_file_errors(run_dir, tmp_path, capsys):
    images = _write_images(tmp_path / "imgs")
    rc = main(["predict", str(run_dir), str(images), str(tmp_path / "missing.png"), "--top-k", "3",
               "--format", "json"])
    captured = capsys.readouterr()
    assert rc == 1
    rows = json.loads(captured.out)
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["digit_0.png", "digit_1.png", "digit_2.png"]
    assert all(len(r["top"]) == 3 and sum(t["prob"] for t in r["top"]) <= 1.0 + 1e-5 for r in rows)
    assert "notes.txt" in captured.err and "missing.png" in captured.err and "2 of 5 inputs failed" in captured.err
    assert main(["predict", str(run_dir), str(images / "digit_*.png"), "--format", "csv", "--top-k", "2"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 6 and {r["rank"] for r in table} == {"1", "2"}


@pytest.mark.parametrize("argv, words", [
    (["train", "--set", "optim.lrr=1"], "did you mean lr"),
    (["train", "--set", "epochs=x"], "bad value for 'epochs'"),
    (["train", "--set", "model.nope=1"], "unknown config field 'nope'"),
    (["train", "--recipe", "nope"], "unknown recipe"),
    (["train", "--model", "vit_nope"], "unknown model"),
    (["eval", "/no/such/run"], "not a run dir"),
])
def test_user_mistakes_are_one_line_errors(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_resume_errors(run_dir, tmp_path, capsys):
    assert main(["train", "--resume", str(run_dir), "--model", "vit_test"]) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err
    assert main(["train", "--model", "vit_test", *TINY, "--out", str(run_dir)]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_resume_finished_run_extends_it(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "3"]) == 0
    assert [r["epoch"] for r in csv.DictReader((copy / "log.csv").open())] == ["1", "2", "3"]
    assert json.loads((copy / "metrics.json").read_text())["epochs"] == 3


def test_print_config_and_recipes(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert "digits_vit" in capsys.readouterr().out.split()
    assert main(["train", "--recipe", "fmnist_vit_fast", "--set", "optim.lr=5e-4", "model.depth=2",
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 5e-4 and cfg["model"] == to_dict(get_config("vit_tiny_convstem7_28", depth=2))
    assert cfg["data"]["name"] == "fashion-mnist" and cfg["model_name"] == "vit_tiny_convstem7_28"


def test_distillation_from_a_trained_teacher(run_dir, tmp_path):
    out = tmp_path / "student"
    rc = main(["train", "--model", "deit_test_distilled", "--epochs", "1", *TINY, "distill.teacher=" + str(run_dir),
               "distill.kind=soft", "distill.tau=2", "--out", str(out)])
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["distill"]["teacher"] == str(run_dir)
    assert json.loads((out / "metrics.json").read_text())["n"] == 40


def test_vt_family_trains(tmp_path):
    out = tmp_path / "vt"
    rc = main(["train", "--model", "vt_resnet_test_small", "--epochs", "1", "--set", "data.limit_train=32",
               "data.limit_val=16", "batch_size=16", "tensorboard=false", "progress=false", "threads=1",
               "model.vt.num_tokens=2", "--out", str(out)])
    assert rc == 0
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["family"] != "vit" and saved["config"]["vt"]["num_tokens"] == 2


def test_segmentation_run(tmp_path, fake_fmnist, capsys):
    out = tmp_path / "seg"
    rc = main(["train", "--model", "fpn_test", "--data", "seg-canvas", "--data-dir", fake_fmnist, "--epochs", "1",
               "--set", "data.canvas_size=32", "data.canvas_train_size=32", "data.canvas_val_size=8", "batch_size=8",
               "tensorboard=false", "progress=false", "threads=1", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 < metrics["pixel_acc"] <= 1.0
    assert metrics["n_pixels"] == 8 * 32 * 32 and len(metrics["per_class_iou"]) == 11
    assert (out / "plots" / "segmentation.png").is_file()
    assert main(["eval", str(out)]) == 0
    assert "mIoU" in capsys.readouterr().out
