"""Test-time augmentation: ``tta="hflip"``, the mean of the class probabilities of each image and
its mirror image, ``tta="shift"``, the same over the image moved in 4 directions, and
``tta="flip-shift"``, over both images moved in 4 directions; in
``evaluate``, in training runs and in ``vitkit eval``."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from vitkit import VitkitError, create_model
from vitkit.cli import main
from vitkit.engine import trainer
from vitkit.engine.evaluate import eval_loader, eval_logits, evaluate, shifted
from vitkit.engine.run_config import RunConfig, resolve

TINY = {"model.img_size": "8", "model.patch_size": "2", "data.limit_train": "64", "data.limit_val": "40",
        "batch_size": "16", "epochs": "1", "tensorboard": "false", "progress": "false", "threads": "1",
        "schedule.warmup_steps": "2", "deterministic": "true"}


def _metrics(model, images, target, task, classes, tta):
    return evaluate(model, eval_loader(TensorDataset(images, target), 8), task, classes, tta=tta)


def test_hflip_is_the_mean_of_the_two_probabilities():
    torch.manual_seed(0)
    model = create_model("vit_test", num_classes=5).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        got = eval_logits(model, x, "hflip").exp()
        want = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(eval_logits(model, x), model(x))  # "none": the plain logits


@pytest.mark.parametrize("name, task, classes", [("vit_test", "classification", 5),
                                                 ("vit_seg_test", "segmentation", 3)])
def test_hflip_predictions_do_not_change_when_the_images_are_mirrored(name, task, classes):
    """With hflip, a mirrored image (and mirrored mask) gets the same result: the pair {x, flip(x)} is
    the same set, and dense outputs are mirrored back. Without it, the model sees other pixels."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        plain, mirrored = eval_logits(model, x), eval_logits(model, x.flip(-1))
        mirrored_tta = eval_logits(model, x.flip(-1), "hflip")
        expected = eval_logits(model, x, "hflip")
    if task == "segmentation":
        mirrored, mirrored_tta = mirrored.flip(-1), mirrored_tta.flip(-1)
    assert (plain - mirrored).abs().max() > 1e-3  # the model alone is not mirror-symmetric
    torch.testing.assert_close(mirrored_tta, expected)
    y = torch.randint(0, classes, (8, 16, 16) if task == "segmentation" else (8,))
    mirrored_y = y.flip(-1) if task == "segmentation" else y
    tta = [_metrics(model, im, t, task, classes, "hflip") for im, t in ((x, y), (x.flip(-1), mirrored_y))]
    assert tta[0]["confusion"] == tta[1]["confusion"]
    assert tta[0]["loss"] == pytest.approx(tta[1]["loss"], rel=1e-5)  # fp32 rounding of mirrored sums


def test_shifted_moves_the_pixels_and_repeats_the_edge():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    right, up = shifted(x, 2, 0), shifted(x, 0, -1)
    assert right.shape == up.shape == x.shape
    torch.testing.assert_close(right[..., 2:], x[..., :-2])  # content moved 2 px right
    torch.testing.assert_close(right[..., :2], x[..., :1].expand(-1, -1, -1, 2))  # left edge copied
    torch.testing.assert_close(up[..., :-1, :], x[..., 1:, :])  # moved 1 px up
    torch.testing.assert_close(up[..., -1, :], x[..., -1, :])  # bottom row copied
    assert shifted(x, 0, 0) is x


@pytest.mark.parametrize("tta, flips", [("shift", False), ("flip-shift", True)])
def test_shift_modes_are_the_mean_of_the_view_probabilities(tta, flips):
    torch.manual_seed(0)
    model = create_model("vit_test", num_classes=5).eval()
    x = torch.randn(4, 3, 16, 16)  # 16 px: a 1-pixel step (1/28 of the side, at least 1)
    moves = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    with torch.no_grad():
        got = eval_logits(model, x, tta).exp()
        views = [shifted(v, dx, dy) for v in ((x, x.flip(-1)) if flips else (x,)) for dx, dy in moves]
        assert len(views) == (10 if flips else 5)
        want = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got.sum(-1), torch.ones(4))
        assert (eval_logits(model, x, "hflip" if flips else "none") - got.log()).abs().max() > 1e-4  # shifts count
        if flips:  # the 10 views of a mirrored batch are the same set (a shift right mirrored is a shift left)
            torch.testing.assert_close(eval_logits(model, x.flip(-1), tta), got.log())


def _segmentation_run(run_dir, data_dir, sets: dict) -> RunConfig:
    """A tiny FPN run on seg-canvas images made from the fake Fashion-MNIST files, with ``sets`` on top."""
    tiny = {k: v for k, v in TINY.items() if not k.startswith(("model.", "data.limit"))}
    return resolve(RunConfig(model="fpn_test"), {
        **tiny, "out_dir": str(run_dir), "data.name": "seg-canvas", "data.data_dir": data_dir, "data.canvas_size": "32",
        "data.canvas_train_size": "16", "data.canvas_val_size": "8", "batch_size": "8", **sets})


def test_shift_modes_are_refused_for_segmentation_before_training(tmp_path, fake_fmnist):
    model = create_model("vit_seg_test", num_classes=3).eval()
    for tta in ("shift", "flip-shift"):
        with pytest.raises(VitkitError, match=f"'{tta}' is for classification, not segmentation; use hflip"):
            _metrics(model, torch.randn(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long), "segmentation", 3,
                     tta)
    cfg = _segmentation_run(tmp_path / "run", fake_fmnist, {"tta": "flip-shift"})
    with pytest.raises(VitkitError, match="'flip-shift' is for classification"):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "model").exists()  # refused before any training


def test_unknown_tta_is_refused():
    model = create_model("vit_test", num_classes=5).eval()
    with pytest.raises(VitkitError, match="unknown test-time augmentation 'vflip'; choose one of none, hflip, "
                                          "shift, flip-shift"):
        _metrics(model, torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), "classification", 5, "vflip")
    with pytest.raises(VitkitError, match="must be one of"):
        resolve(RunConfig(model="vit_test"), {"tta": "vflip"})


def _eval_cli(argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["eval", *argv])
    return code, out.getvalue()


def test_a_run_with_tta_evaluates_with_it_and_vitkit_eval_follows_the_run(tmp_path):
    run = tmp_path / "run"
    cfg = resolve(RunConfig(model="vit_test"), {**TINY, "tta": "hflip", "out_dir": str(run)})
    metrics = trainer.train(cfg)
    with_tta, without = (_eval_cli([str(run), "--json", *extra]) for extra in ([], ["--tta", "none"]))
    assert with_tta[0] == 0 and without[0] == 0
    by_default, plain = json.loads(with_tta[1]), json.loads(without[1])
    assert by_default["top1"] == metrics["top1"] and by_default["loss"] == pytest.approx(metrics["loss"], rel=1e-6)
    assert plain["loss"] != pytest.approx(by_default["loss"], rel=1e-4)  # the run's figures are the TTA ones
    for tta in ("shift", "flip-shift"):
        code, shift_out = _eval_cli([str(run), "--json", "--tta", tta])
        assert code == 0
        assert json.loads(shift_out)["loss"] != pytest.approx(by_default["loss"], rel=1e-4)


def _recorded_ttas(monkeypatch) -> list[str]:
    seen = []
    real = trainer.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs["tta"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", spy)
    return seen


@pytest.mark.parametrize("tta, final_tta, expected", [("none", "shift", ["none", "none", "shift"]),
                                                      ("hflip", "same", ["hflip", "hflip", "hflip"]),
                                                      ("hflip", "none", ["hflip", "hflip", "none"])])
def test_final_tta_scores_only_the_last_evaluation(tmp_path, monkeypatch, tta, final_tta, expected):
    seen = _recorded_ttas(monkeypatch)
    run = tmp_path / "run"
    cfg = resolve(RunConfig(model="vit_test"), {**TINY, "epochs": "3", "tta": tta, "final_tta": final_tta,
                                                 "out_dir": str(run)})
    metrics = trainer.train(cfg)
    assert seen == expected
    code, out = _eval_cli([str(run), "--json"])  # vitkit eval follows the run's last evaluation
    assert code == 0 and json.loads(out)["top1"] == metrics["top1"]
    assert json.loads(out)["loss"] == pytest.approx(metrics["loss"], rel=1e-6)


def test_final_tta_when_the_last_epoch_was_not_evaluated(tmp_path, monkeypatch):
    """A run resumed after its time budget ran out trains nothing; its final evaluation still uses final_tta."""
    run = tmp_path / "run"
    cfg = resolve(RunConfig(model="vit_test"), {**TINY, "epochs": "3", "tta": "none", "final_tta": "flip-shift",
                                                 "schedule.time_budget_s": "0.001", "out_dir": str(run)})
    first = _recorded_ttas(monkeypatch)
    trainer.train(cfg)
    assert first == ["flip-shift"]  # the budget ran out in epoch 1: that evaluation is the last
    first.clear()
    trainer.train(cfg, resume=True)
    assert first == ["flip-shift"]


def test_final_tta_shift_is_refused_for_segmentation_before_training(tmp_path, fake_fmnist):
    cfg = _segmentation_run(tmp_path / "run", fake_fmnist, {"tta": "hflip", "final_tta": "shift"})
    with pytest.raises(VitkitError, match="'shift' is for classification"):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "model").exists()
    with pytest.raises(VitkitError, match="must be one of"):
        resolve(RunConfig(model="vit_test"), {"final_tta": "vflip"})
