"""Engine units: run config, schedule, EMA, losses, metrics, checkpoints, NaN stop, resume."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vitkit import VitkitError, create_model, list_models
from vitkit.data import build_data
from vitkit.engine import checkpoint as ckpt
from vitkit.engine import loop, trainer
from vitkit.engine.distributed import unwrap
from vitkit.engine.evaluate import autocast, eval_loader, evaluate
from vitkit.engine.logging import RunLogger as LOGGER
from vitkit.engine.losses import TrainLoss, classification_ce, distillation_term, segmentation_ce
from vitkit.engine.metrics import classification_summary, segmentation_summary, topk_correct, update_confusion
from vitkit.engine.optim import ModelEMA, build_optimizer, make_optimizer, warmup_cosine
from vitkit.engine.recipes import RECIPES, get_recipe
from vitkit.engine.run_config import OptimConfig, RunConfig, load_run_config, resolve
from vitkit.models.vit import DistilledOutput
from vitkit.registry import get_config

TINY = {"model.img_size": "8", "model.patch_size": "2", "data.limit_train": "96", "data.limit_val": "40",
        "batch_size": "16", "epochs": "2", "tensorboard": "false", "progress": "false", "threads": "1",
        "schedule.warmup_steps": "2", "optim.lr": "3e-3", "deterministic": "true"}


def tiny_cfg(tmp_path, device: str = "cpu", **extra) -> RunConfig:
    sets = {**TINY, "device": device, "out_dir": str(tmp_path / "run"),
            **{k.replace("__", "."): str(v) for k, v in extra.items()}}
    return resolve(RunConfig(model="vit_test"), sets)


def test_resolve_typed_overrides():
    cfg = resolve(RunConfig(), {"optim.lr": "1e-3", "model.depth": "2", "data.name": "fashion-mnist",
                                "ema.enabled": "on", "optim.betas": "0.8,0.9"})
    assert cfg.optim.lr == 1e-3 and cfg.model == get_config("vit_mini_patch2_8", depth=2)
    assert cfg.data.name == "fashion-mnist" and cfg.ema.enabled and cfg.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("sets, words", [
    ({"optim.lrr": "1"}, "did you mean lr"), ({"epochs": "two"}, "epochs"),
    ({"model.depthh": "2"}, "did you mean depth"), ({"model.depth": "x"}, "depth"),
    ({"precision": "fp8"}, "must be one of"), ({"epochs": "0"}, "out of range"),
    ({"model_overrides": '{"depth": 2}'}, "model.NAME=VALUE"),
])
def test_resolve_rejects_bad_overrides(sets, words):
    with pytest.raises(VitkitError, match=words):
        resolve(RunConfig(), sets)


def test_recipes_resolve_for_registered_models():
    assert get_recipe("digits_vit").model_name == "vit_mini_patch2_8"
    assert get_recipe("digits_vit").model == get_config("vit_mini_patch2_8")
    changed = RunConfig(model_name="vit_mini_convstem_28", model=get_config("vit_mini_convstem_28", drop_path_rate=0.1))
    assert resolve(changed, {}).model == get_config("vit_mini_convstem_28", drop_path_rate=0.1)
    checked = [name for name, cfg in RECIPES.items() if cfg.model_name in list_models()]
    assert "digits_vit" in checked and "fmnist_vit_fast" in checked
    for name in checked:
        assert resolve(RECIPES[name], {}).model == RECIPES[name].model
    with pytest.raises(VitkitError, match="unknown recipe"):
        get_recipe("digits_vt")


def test_warmup_cosine_shape():
    f = [warmup_cosine(s, 4, 20, 0.1) for s in range(20)]
    assert f[0] == pytest.approx(0.25) and f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[3:], f[4:], strict=False))
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(12, 4, 20, 0.0) == pytest.approx(0.5)


def test_ema_update_formula():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * model.weight)


def test_soft_target_ce_matches_hard_ce():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    hard = classification_ce(logits, y, 0.1)
    torch.testing.assert_close(classification_ce(logits, F.one_hot(y, 4).float(), 0.1), hard)
    torch.testing.assert_close(hard, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_segmentation_loss_ignores_pixels():
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 4, 4))
    masked = mask.clone()
    masked[:, :2] = 255
    expect = F.cross_entropy(logits.permute(0, 2, 3, 1)[:, 2:].reshape(-1, 3), mask[:, 2:].reshape(-1))
    torch.testing.assert_close(segmentation_ce(logits, masked, 255, 0.0), expect)


def test_distillation_loss_hard_and_soft():
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    torch.testing.assert_close(distillation_term(s, t, "hard", 1.0), F.cross_entropy(s, t.argmax(-1)))
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(distillation_term(s, t, "soft", 1.0), kl)
    teacher = lambda x: t  # noqa: E731
    loss = TrainLoss("classification", teacher=teacher, alpha=0.25, kind="hard")
    got = loss(DistilledOutput(s, s * 2), y, torch.zeros(5, 1))
    torch.testing.assert_close(got, 0.75 * F.cross_entropy(s, y) + 0.25 * F.cross_entropy(s * 2, t.argmax(-1)))


def test_metrics_by_hand():
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [1, 2, 3], [3, 1, 2]])
    y = torch.tensor([0, 2, 1, 1])
    assert topk_correct(logits, y, (1, 2)) == {1: 1, 2: 3}
    conf = torch.zeros(3, 3, dtype=torch.long)
    update_confusion(conf, logits.argmax(-1), y)
    summary = classification_summary(conf, top5=4, n=4)
    assert summary["top1"] == 0.25 and summary["per_class_acc"] == [1.0, 0.0, 0.0]
    seg = torch.zeros(2, 2, dtype=torch.long)
    update_confusion(seg, torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0], [1, 255]]), ignore_index=255)
    s = segmentation_summary(seg)  # class 0: TP1 FN1 -> 1/2; class 1: TP1 FP1 -> 1/2
    assert s["pixel_acc"] == pytest.approx(2 / 3) and s["miou"] == pytest.approx(0.5)


def _state(step=3):
    return {"epoch": 1, "batch_in_epoch": 0, "global_step": step, "history": "[]", "rng": trainer.rng_state()}


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    model = create_model("vit_test")
    ckpt.save_checkpoint(tmp_path, model, None, _state())
    other = create_model("vit_test")
    assert ckpt.load_checkpoint(tmp_path, other)["global_step"] == 3
    torch.testing.assert_close(other.state_dict(), model.state_dict())
    weights = next((tmp_path / "checkpoint").glob("step_*")) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    fresh = create_model("vit_test")
    snapshot = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(VitkitError, match="corrupt or truncated"):
        ckpt.load_checkpoint(tmp_path, fresh)
    torch.testing.assert_close(fresh.state_dict(), snapshot)  # nothing half loaded
    (tmp_path / "checkpoint" / "latest.json").write_text("{not json")
    with pytest.raises(VitkitError, match="corrupt"):
        ckpt.load_checkpoint(tmp_path, fresh)


def test_train_writes_run_dir_and_learns(tmp_path, device):
    cfg = tiny_cfg(tmp_path, device, epochs=3, ema__enabled="true", ema__decay="0.5")
    metrics = trainer.train(cfg)
    run = tmp_path / "run"
    for name in ("config.json", "log.csv", "metrics.json", "model/model.safetensors", "checkpoint/latest.json",
                 "plots/curves.png", "plots/confusion.png"):
        assert (run / name).is_file(), name
    saved = load_run_config(run)
    assert saved.data.img_size == 8 and saved.model_name == "vit_test"
    assert saved.model == get_config("vit_test", img_size=8, patch_size=2, num_classes=10, in_chans=1)
    assert json.loads((run / "metrics.json").read_text())["top1"] == metrics["top1"]
    history = LOGGER(run).read_history(99)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["class_names"][:2] == ["0", "1"] and meta["preprocess"]["img_size"] == 8
    bundle = build_data(saved.data)  # the published (EMA) weights reproduce the final metrics
    again = evaluate(create_model(run).to(device), eval_loader(bundle.val, 64), "classification", 10)
    assert again["top1"] == metrics["top1"] and again["confusion"] == metrics["confusion"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, device, monkeypatch):
    cfg = tiny_cfg(tmp_path, device, epochs=3)
    original = loop._forward_backward
    calls = {"n": 0}

    def poisoned(run, images, target, sync):
        calls["n"] += 1
        loss, logits = original(run, images, target, sync)
        return (torch.full_like(loss, float("nan")) if calls["n"] == 8 else loss), logits  # 6 batches/epoch

    monkeypatch.setattr(loop, "_forward_backward", poisoned)
    with pytest.raises(loop.NonFiniteLoss, match="loss is nan at epoch 2, batch 2;"):
        trainer.train(cfg)
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "latest.json").read_text())
    assert manifest["epoch"] == 1 and manifest["global_step"] == 6


def test_nan_loss_before_any_checkpoint_says_so(tmp_path, device, monkeypatch):
    cfg = tiny_cfg(tmp_path, device, epochs=2)
    original = loop._forward_backward

    def poisoned(run, images, target, sync):
        loss, logits = original(run, images, target, sync)
        return torch.full_like(loss, float("inf")), logits

    monkeypatch.setattr(loop, "_forward_backward", poisoned)
    with pytest.raises(loop.NonFiniteLoss, match="loss is inf at epoch 1, batch 1; no checkpoint was saved") as info:
        trainer.train(cfg)
    assert "kept" not in str(info.value) and not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, device, precision, monkeypatch):
    """SIGINT mid-epoch saves a checkpoint; resuming ends with the uninterrupted weights
    (fp16: with the loss scaler's state saved and restored)."""
    full = tiny_cfg(tmp_path / "a", device, data__augment="basic", precision=precision)
    trainer.train(full)
    cut = tiny_cfg(tmp_path / "b", device, data__augment="basic", precision=precision)
    original = loop.train_one_epoch

    def interrupt_in_epoch_2(run, loader, epoch, start_batch, stop):
        stop.requested = epoch == 1 and start_batch == 0
        return original(run, loader, epoch, start_batch, stop)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupt_in_epoch_2)
    with pytest.raises(trainer.Interrupted, match="--resume"):
        trainer.train(cut)
    manifest = json.loads((tmp_path / "b" / "run" / "checkpoint" / "latest.json").read_text())
    assert manifest["epoch"] == 1 and 0 < manifest["global_step"] < 12
    state = torch.load(tmp_path / "b" / "run" / "checkpoint" / manifest["dir"] / "state.pt", weights_only=True)
    assert ("scaler" in state) == (precision == "fp16")
    assert state["partial_epoch"]["count_batches"] == manifest["global_step"] - 6  # epoch 2's batches so far
    trainer.train(cut, resume=True)
    a = load_file(tmp_path / "a" / "run" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "model" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the interrupted epoch's log row covers the whole epoch: the same sums, added in two parts
    rows_a, rows_b = LOGGER(tmp_path / "a" / "run").read_history(99), LOGGER(tmp_path / "b" / "run").read_history(99)
    assert [(r["epoch"], r["step"]) for r in rows_a] == [(r["epoch"], r["step"]) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], rel=1e-12, abs=0)
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-9, abs=0)  # float64 sums, 2 orders
    assert math.isfinite(json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())["loss"])


def _replay_big_batch(run, micro_batches) -> dict:
    """The gradient of the concatenated micro-batches in one pass, on a copy of the current weights."""
    ref = copy.deepcopy(unwrap(run.model))
    ref.zero_grad(set_to_none=True)
    images, target = torch.cat([b[0] for b in micro_batches]), torch.cat([b[1] for b in micro_batches])
    with autocast(run.cfg.precision):
        run.loss_fn(ref(images), target, images).backward()
    return {name: p.grad for name, p in ref.named_parameters()}


def test_grad_accum_equals_big_batch(tmp_path, monkeypatch):
    """batch 8 x 2 accumulation steps == batch 16 (same samples per optimizer step).

    At every optimizer step of the accumulating run, its summed gradient is compared with the
    gradient of the same 16 images in one batch, on the same weights: what is exactly equal in
    real arithmetic. In fp32 each is a sum of at most n = 16 images x 17 tokens terms, so two
    summation orders differ by at most 2 n u (u = 2^-24) of the summed magnitudes; the scale is
    the largest gradient entry of the model. (Comparing weights after AdamW steps is not exact:
    AdamW divides by sqrt(v), which turns rounding noise on a zero-gradient bias into a step.)
    Both runs also take the same number of steps with the same learning rates.
    """
    fwd_bwd, opt_step = loop._forward_backward, loop._optimizer_step
    micro, lrs = [], []

    def record(run, images, target, sync):
        micro.append((images, target))
        return fwd_bwd(run, images, target, sync)

    def check_then_step(run):
        lrs[-1].append(run.optimizer.param_groups[0]["lr"])
        if run.cfg.grad_accum > 1:
            assert len(micro) == run.cfg.grad_accum
            ref = _replay_big_batch(run, micro)
            scale = max(float(g.abs().max()) for g in ref.values())
            tol = 2 * 16 * 17 * 2.0**-24
            for name, p in unwrap(run.model).named_parameters():
                torch.testing.assert_close(p.grad, ref[name], rtol=tol, atol=tol * scale, msg=name)
        micro.clear()
        opt_step(run)

    monkeypatch.setattr(loop, "_forward_backward", record)
    monkeypatch.setattr(loop, "_optimizer_step", check_then_step)
    lrs.append([])
    big = trainer.train(tiny_cfg(tmp_path / "big", epochs=1, data__augment="none"))
    lrs.append([])
    acc = trainer.train(tiny_cfg(tmp_path / "acc", epochs=1, data__augment="none", batch_size=8, grad_accum=2))
    assert len(lrs[1]) == len(lrs[0]) == 6 and lrs[1] == lrs[0]
    assert acc["top1"] == pytest.approx(big["top1"], abs=0.05)


def test_bf16_mixup_run(tmp_path, device):
    cfg = tiny_cfg(tmp_path, device, epochs=1, precision="bf16", data__mixup_alpha="0.4", data__cutmix_alpha="0.4")
    metrics = trainer.train(cfg)
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["top1"] <= 1.0
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "latest.json").read_text())
    assert manifest["global_step"] == 6


def test_compiled_model_saves_plain_weights(tmp_path, monkeypatch):
    """torch.compile wraps the module; checkpoints and model/ hold the plain module's keys.

    The wrapper (and its ``_orig_mod.`` prefix) is the same for every backend, so the run compiles with
    the cheapest one, ``eager`` (Dynamo graph capture, no code generation)."""
    compiled = []

    def cheap_compile(model, *args, **kwargs):
        compiled.append(model)
        return real_compile(model, *args, **{**kwargs, "backend": "eager"})

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", cheap_compile)
    try:
        trainer.train(tiny_cfg(tmp_path, epochs=1, compile="true", data__limit_val="16"))
    finally:
        torch._dynamo.reset()
    assert len(compiled) == 1  # the trainer did compile the model it trained
    loaded = create_model(tmp_path / "run")  # strict load: no `_orig_mod.` prefixes
    state = load_file(next((tmp_path / "run" / "checkpoint").glob("step_*")) / "model.safetensors")
    assert set(state) == set(loaded.state_dict())


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _adamw_params_after_steps(impl: str, steps: int = 5) -> tuple[dict, torch.optim.Optimizer]:
    """A small MLP's parameters after ``steps`` AdamW steps (two weight decay groups) with kernel ``impl``
    (an MLP: every gradient is well above rounding noise, unlike a ViT's key bias, whose exact gradient
    is zero, so that Adam's normalised step would follow the sign of the noise)."""
    model = _mlp()
    opt = build_optimizer(model, OptimConfig(lr=1e-2, impl=impl))
    x, y = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.named_parameters()}, opt


@pytest.mark.parametrize("impl, flag", [("fused", "fused"), ("foreach", "foreach"), ("auto", None)])
def test_optimizer_impls_give_the_for_loop_update(impl, flag):
    """The same AdamW update in every kernel: only the order of fp32 roundings differs, a few ulp
    (2^-24 relative) per step of parameters of size ~1, so 5 steps agree to rel 1e-5, abs 1e-6."""
    ref, ref_opt = _adamw_params_after_steps("for-loop")
    got, opt = _adamw_params_after_steps(impl)
    assert ref_opt.param_groups[0]["foreach"] is False
    if flag is not None:
        assert opt.param_groups[0][flag] is True
    start = dict(_mlp().named_parameters())
    assert all(not torch.equal(ref[k], start[k]) for k in ref)  # the steps did change the parameters
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_optimizer_impl_refused_where_torch_cannot_run_it():
    with pytest.raises(VitkitError, match="optim.impl"):
        resolve(RunConfig(model="vit_test"), {"optim.impl": "fast"})
    params = torch.nn.Linear(2, 2).parameters()
    with pytest.raises(VitkitError, match="impl 'fused' cannot run here .*differentiable"):
        make_optimizer(torch.optim.AdamW, params, "fused", lr=1e-3, differentiable=True)
