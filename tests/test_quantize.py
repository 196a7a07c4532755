"""Static int8 (PT2E) inference: calibrated scales, int8 kernels, logits close to fp32."""
from __future__ import annotations

import pytest
import torch

from vitkit import create_model
from vitkit.errors import VitkitError

pytest.importorskip("torchao")
from vitkit.tools import quantize as quantize_mod  # noqa: E402
from vitkit.tools.quantize import convert_static_int8, graph_targets, quantize_static_int8  # noqa: E402


def _batches(model, n: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.preprocess.in_chans, *model.preprocess.img_size)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("attention", ["fp32", "bf16"])
def test_static_int8_close_to_fp32_without_runtime_quantization(attention):
    """Every Linear / Conv2d runs on int8 weights (one per-channel dequantize each) with constant
    activation scales: quantize_per_tensor.default takes float scales, and no choose_qparams (the
    run-time scale of dynamic quantization) is in the graph; compiled, it calls oneDNN's int8 linear.

    Tolerance: activations use 7 or 8 bits per tensor, so each quantized matmul input carries a
    rounding error of RMS ~ step / sqrt(12) ~ (range / 127) / 3.5, about 1.5 % of its RMS for a
    range of ~6 standard deviations; weights (8-bit per channel) add less. vit_test has 10 quantized
    matmuls (patch conv, 2 x (qkv, proj, fc1, fc2), head); independent errors add in quadrature to
    ~5 %, so the relative logit error must stay below 10 %. Top-1 must agree wherever the fp32 top-2
    margin exceeds twice that bound times the logits' RMS. With ``attention="bf16"`` the attention core
    (q k^T, softmax, times v) runs on bf16 q, k, v: each rounding is at most 2^-8 relative, a few of
    them per attention layer, well inside the same bound.
    """
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = create_model("vit_test").eval()
    calib, test = _batches(model, 4, 16, seed=1), _batches(model, 1, 32, seed=2)[0]
    with torch.no_grad():
        ref = model(test)  # (B, classes)
    converted = convert_static_int8(model, calib, attention)
    ops = graph_targets(converted)
    casts = ops.count("aten.to.dtype")  # bf16: q, k, v to bf16 and the output back, in each block
    assert casts == (0 if attention == "fp32" else 4 * model.config.depth), casts
    assert all(m.core_dtype is None for m in model.modules() if hasattr(m, "core_dtype"))  # model as it was
    n_weights = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.modules())
    assert ops.count("quantized_decomposed.dequantize_per_channel.default") == n_weights
    assert "quantized_decomposed.quantize_per_tensor.default" in ops
    assert not [op for op in ops if "choose_qparams" in op or op.endswith(".tensor")
                and "quantize" in op]
    compiled = quantize_static_int8(model, calib, attention=attention)
    with torch.no_grad():
        out, code = run_and_get_code(compiled, test)
        eager = converted(test)
    assert "qlinear_pointwise" in "\n".join(code)
    for got in (eager, out):
        rel = float((got - ref).norm() / ref.norm())
        assert rel < 0.10, rel
        top2 = ref.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * 0.10 * ref.pow(2).mean().sqrt()
        assert torch.equal(got.argmax(1)[clear], ref.argmax(1)[clear])
    with torch.no_grad():
        assert converted(test[:5]).shape == (5, ref.shape[1])  # the batch size stays free


def test_static_int8_mixed_bf16_runs_the_rest_in_bf16():
    """int8-mixed-bf16: the compiled graph runs under bf16 autocast, so its generated code handles bf16
    (the fp32-attention graph alone has none) while the matmuls stay oneDNN int8; the logits come back
    in fp32. Tolerance: the int8 bound of the test above (10 % relative); bf16 adds a rounding of at most
    2^-8 relative to each LayerNorm / GELU / residual output, a few per block, RMS well under 1 %."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = create_model("vit_test").eval()
    calib, test = _batches(model, 4, 16, seed=1), _batches(model, 1, 32, seed=2)[0]
    with torch.no_grad():
        ref = model(test)  # (B, classes)
        plain = "\n".join(run_and_get_code(quantize_static_int8(model, calib, attention="fp32"), test)[1])
        torch._dynamo.reset()
        mixed = quantize_static_int8(model, calib, attention="fp32", mixed_bf16=True)
        out, code = run_and_get_code(mixed, test)
    code = "\n".join(code)
    assert "bfloat16" not in plain.lower() and "bfloat16" in code.lower()
    assert "qlinear_pointwise" in code
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float((out - ref).norm() / ref.norm()) < 0.10
    with pytest.raises(VitkitError, match="compile=True"):
        quantize_static_int8(model, calib, compile=False, mixed_bf16=True)
    # bf16 attention casts leave export's fp32 dtype checks in the graph; autocast would trip them
    checks = "aten._assert_tensor_metadata.default"
    bf16_attention = convert_static_int8(model, calib, attention="bf16")
    assert checks in graph_targets(bf16_attention)
    assert checks not in graph_targets(quantize_mod.drop_dtype_asserts(bf16_attention))


def test_static_int8_attention_dtype_follows_the_cpu(monkeypatch):
    for has_bf16, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(quantize_mod, "cpu_has_bf16", lambda has=has_bf16: has)
        assert quantize_mod.attention_dtype("auto") is dtype
    assert quantize_mod.attention_dtype("fp32") is None
    with pytest.raises(VitkitError, match="unknown attention dtype 'fp16'"):
        quantize_mod.attention_dtype("fp16")


def test_static_int8_refuses_bad_calibration():
    model = create_model("vit_test")
    with pytest.raises(VitkitError, match="at least one"):
        convert_static_int8(model, [])
    with pytest.raises(VitkitError, match="B >= 2"):
        convert_static_int8(model, _batches(model, 1, 1, seed=0))


@pytest.mark.parametrize("name", ["vit_test", "deit_test_distilled"])
def test_static_int8_compiled_matches_its_eager_graph(name):
    """The compiled int8 model computes the converted graph: the class-token path (the last block
    for the P prefix rows only, a sliced residual) included. Both run the same int8 arithmetic with
    the same constant scales; only fp32 summation order differs (~1e-6 relative), which can flip a
    rounding in a requantization now and then: one step of 1/127 of a tensor's range in a few
    elements, far below the 1 % bound. A wrongly fused graph differs by tens of percent."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    calib, test = _batches(model, 3, 8, seed=1), _batches(model, 1, 8, seed=3)[0]
    converted = convert_static_int8(model, calib)
    compiled = quantize_static_int8(model, calib)
    with torch.no_grad():
        eager, out = converted(test), compiled(test)
    assert float((out - eager).norm() / eager.norm()) < 0.01
