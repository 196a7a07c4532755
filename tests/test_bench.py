"""Bench runs and reports well-formed figures; gradient checkpointing keeps gradients identical."""
import json
from dataclasses import replace

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.tools.bench import BenchConfig, input_batch, make_step, peak_memory_bytes, quantize_linear_int8, run_bench
from vitkit.tools.bench import prepare as prepare_bench


@pytest.mark.parametrize("train", [False, True])
def test_run_bench_with_timm_reference(train):
    cfg = BenchConfig("vit_test", batch_size=2, iters=2, warmup=1, rounds=2, train=train, compare="timm")
    results = run_bench(cfg, peak_flops=1e11)
    assert [r.label for r in results] == ["vitkit", "timm"]
    vk, tm = results
    assert vk.params == tm.params == sum(p.numel() for p in vitkit.create_model("vit_test").parameters())
    # vitkit's last block computes only the class token's output (same logits): fewer FLOPs than timm's
    assert 0.5 * tm.flops_per_step < vk.flops_per_step < tm.flops_per_step
    for r in results:
        assert r.step_s > 0 and r.imgs_per_s == pytest.approx(2 / r.step_s)
        assert r.peak_mem_bytes > 0 and r.achieved_flops == pytest.approx(r.flops_per_step / r.step_s)


def test_training_flops_are_about_three_times_inference():
    infer = run_bench(BenchConfig("vit_test", batch_size=2, iters=1, warmup=0, memory=False), 1e11)[0]
    train = run_bench(BenchConfig("vit_test", batch_size=2, iters=1, warmup=0, memory=False, train=True), 1e11)[0]
    assert 2.5 < train.flops_per_step / infer.flops_per_step < 3.5


def test_peak_memory_counts_live_allocations():
    def step():
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(1 << 21, dtype=torch.uint8)
        del a
        return b.sum()
    assert peak_memory_bytes(step) >= 3 << 20


def test_cli_prints_table_and_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "vit_test", "--batch-size", "2", "--iters", "2", "--warmup", "1", "--train",
            "--dtype", "bf16", "--channels-last", "--compare", "timm", "--json", str(out), "--peak-n", "256"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "ratio vitkit/timm:" in text and "matmul peak (bf16)" in text
    data = json.loads(out.read_text())
    assert len(data["results"]) == 2 and data["results"][0]["imgs_per_s"] > 0
    assert data["host_memory"] in ("keep", "default")  # keep on glibc; default elsewhere (nothing to set)


@pytest.mark.parametrize("args, match", [
    (["resnet_test", "--compare", "timm"], "plain ViT"),
    (["vit_convstem_test", "--compare", "timm"], "conv stem"),  # timm's ViT has no conv stem: no equivalent
    (["no_such_model"], "unknown model"),
    (["vit_test", "--batch-size", "0"], "must be >= 1"),
])
def test_cli_errors(capsys, args, match):
    assert main(["bench", *args, "--iters", "1", "--warmup", "0", "--peak-n", "64"]) == 2
    assert match in capsys.readouterr().err


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_test", drop_path_rate=0.0).train()
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    grads = []
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_grad_checkpointing_config_flag_saves_memory():
    # batch 32: the activation memory that recomputation saves (~300 kB) dwarfs the step-to-step spread of the
    # profiler's peak (~40 kB, from allocation order); at batch 4 the two were of one size
    cfg = dict(batch_size=32, iters=1, warmup=0, train=True)
    plain = run_bench(BenchConfig("vit_test", **cfg), 1e11)[0]
    ckpt = run_bench(BenchConfig("vit_test", grad_checkpointing=True, **cfg), 1e11)[0]
    assert vitkit.create_model("vit_test", grad_checkpointing=True).grad_checkpointing
    assert ckpt.peak_mem_bytes < plain.peak_mem_bytes


def test_bad_dtype():
    with pytest.raises(VitkitError, match="dtype"):
        BenchConfig("vit_test", dtype="fp8").validate()


def test_int8_inference_counts_fp32_flops_and_stays_close():
    """int8 bench: every Linear becomes a dynamic-quantized one; FLOPs are the fp32 model's; the
    quantized logits stay near fp32 ones; training in int8 is refused."""
    fp32 = run_bench(BenchConfig("vit_test", batch_size=2, iters=1, warmup=0, memory=False), 1e11)[0]
    int8 = run_bench(BenchConfig("vit_test", batch_size=2, iters=1, warmup=0, memory=False, dtype="int8"), 1e11)[0]
    assert int8.flops_per_step == fp32.flops_per_step > 0 and int8.imgs_per_s > 0
    torch.manual_seed(0)
    model = vitkit.create_model("vit_test").eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        ref = model(x)
        quant = quantize_linear_int8(model)
        out = quant(x)
    assert not any(type(m) is torch.nn.Linear for m in quant.modules())
    assert 0 < (out - ref).abs().max() < 0.1 * ref.abs().max()
    with pytest.raises(VitkitError, match="inference only"):
        BenchConfig("vit_test", dtype="int8", train=True).validate()


@pytest.fixture
def fresh_dynamo():
    """torch.compile's caches emptied: each test traces its own steps (one process runs one
    configuration, as `vitkit bench` does)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("optimizer, impl, flag", [
    ("sgd", "foreach", "foreach"), ("adamw", "fused", "fused"), ("adamw", "for-loop", None)])
def test_train_step_options_run_and_update(optimizer, impl, flag, fresh_dynamo):
    """The chosen optimizer and kernel run the step; compiling the whole step (eager backend: the
    same ops, traced) gives the same parameters as the plain step (fp32, 2 steps: rounding-level)."""
    cfg = BenchConfig("vit_test", batch_size=2, train=True, optimizer=optimizer, optim_impl=impl,
                      compile_backend="eager")
    results = {}
    for compile_step in (False, True):
        torch.manual_seed(0)
        model = vitkit.create_model("vit_test")
        before = _params(model)
        c = replace(cfg, compile_step=compile_step)
        runnable, x, plain = prepare_bench(model, input_batch(model, c), c)
        step = make_step(runnable, x, c)
        assert type(step.optimizer).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[optimizer]
        if flag is not None:
            assert step.optimizer.param_groups[0][flag] is True
        losses = [step() for _ in range(2)]
        assert all(torch.isfinite(loss) for loss in losses)
        results[compile_step] = _params(plain)
        assert any(not torch.equal(before[k], results[compile_step][k]) for k in before)
    torch.testing.assert_close(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_run_bench_adamw_compiled_step_with_timm(fresh_dynamo):
    cfg = BenchConfig("vit_test", batch_size=2, iters=1, warmup=1, rounds=1, train=True, compare="timm",
                      optimizer="adamw", optim_impl="foreach", compile_step=True, compile_backend="eager", memory=False)
    results = run_bench(cfg, peak_flops=1e11)
    assert [r.label for r in results] == ["vitkit", "timm"] and all(r.step_s > 0 for r in results)


@pytest.mark.parametrize("args, match", [
    (["--compile-step"], "with --train"),
    (["--train", "--compile", "--compile-step"], "without --compile"),
    (["--compile-mode", "max-autotune"], "needs something compiled"),
])
def test_cli_refuses_compile_step_misuse(capsys, args, match):
    assert main(["bench", "vit_test", *args, "--iters", "1", "--warmup", "0", "--peak-n", "64"]) == 2
    assert match in capsys.readouterr().err


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """--compile-mode is the mode torch.compile gets, for the model and for the whole training step."""
    seen = []
    real = torch.compile

    def spy(fn, **kwargs):
        seen.append(kwargs.get("mode"))
        return real(fn, **{**kwargs, "mode": None})  # eager backend: the mode itself is not exercised
    monkeypatch.setattr(torch, "compile", spy)
    cfg = dict(batch_size=2, iters=1, warmup=0, rounds=1, memory=False, compile_backend="eager",
               compile_mode="max-autotune")
    run_bench(BenchConfig("vit_test", compile=True, **cfg), 1e11)
    run_bench(BenchConfig("vit_test", train=True, compile_step=True, **cfg), 1e11)
    assert seen == ["max-autotune", "max-autotune"]


def test_int8_static_peak_is_its_own_kernel(monkeypatch):
    """The int8-static mode's peak comes from a compiled static-int8 Linear, not torch._int_mm,
    and is a positive rate of 2 n^3 operations per product."""
    pytest.importorskip("torchao")
    from vitkit.tools import bench

    monkeypatch.setattr(torch, "_int_mm", lambda *a: pytest.fail("_int_mm is not this mode's kernel"))
    calls = []
    real = bench.quantize_static_int8
    monkeypatch.setattr(bench, "quantize_static_int8", lambda m, b, **k: calls.append(b[0].shape) or real(m, b, **k))
    assert bench.mode_peak("int8-static", n=64) > 0
    assert calls == [torch.Size([2, 1, 32, 64])]


def test_int8_static_runs_compiled_and_counts_fp32_flops(monkeypatch):
    """int8-static(-bf16) bench: the calibrated, compiled int8 model runs (-bf16: with the ops between
    the int8 layers in bf16); FLOPs and parameter count are the fp32 model's; training, channels-last
    and non-CPU devices are refused."""
    pytest.importorskip("torchao")
    from vitkit.tools import bench

    mixed, real = [], bench.quantize_static_int8
    monkeypatch.setattr(bench, "quantize_static_int8",
                        lambda m, b, **k: mixed.append(k["mixed_bf16"]) or real(m, b, **k))
    cfg = dict(batch_size=2, iters=1, warmup=0, memory=False, overrides={"depth": 1})
    fp32 = run_bench(BenchConfig("vit_test", **cfg), 1e11)[0]
    for dtype in ("int8-static", "int8-static-bf16"):
        static = run_bench(BenchConfig("vit_test", dtype=dtype, **cfg), 1e11)[0]
        assert static.flops_per_step == fp32.flops_per_step > 0 and static.params == fp32.params
        assert static.imgs_per_s > 0
    assert mixed == [False, True]
    for bad in (dict(train=True), dict(channels_last=True)):
        with pytest.raises(VitkitError, match="inference only"):
            BenchConfig("vit_test", dtype="int8-static", **bad).validate()
    with pytest.raises(VitkitError, match="CPU only"):
        BenchConfig("vit_test", dtype="int8-static", device="cuda:0").validate()
