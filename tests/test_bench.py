"""Bench runs and reports well-formed figures; gradient checkpointing keeps gradients identical."""
import json

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.tools.bench import BenchConfig, peak_memory_bytes, quantize_linear_int8, run_bench


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


@pytest.mark.parametrize("args, match", [
    (["resnet_test", "--compare", "timm"], "plain ViT"),
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
    cfg = dict(batch_size=4, iters=1, warmup=0, train=True)
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
