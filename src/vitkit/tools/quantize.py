"""Static int8 inference: calibrated activation scales, int8 kernels, nothing quantized at run time.

PyTorch 2 export quantization (PT2E, from the ``torchao`` package):

1. ``torch.export`` captures the model as an ATen graph (batch dimension left dynamic).
2. ``prepare_pt2e`` with the ``X86InductorQuantizer`` inserts observers: per-channel symmetric int8
   for the weights of every Linear / Conv2d, per-tensor affine uint8 for their inputs.
3. Calibration: the observers see a few batches and fix each activation's scale and zero point
   (a histogram observer that minimises the rounding + clipping error).
4. ``convert_pt2e`` replaces the observers with quantize / dequantize pairs whose scales are
   constants; run eagerly, this graph is the fp32 reference of the int8 arithmetic.
5. ``torch.compile`` with inductor *freezing* folds the weights into the graph and lowers each
   dequantize -> Linear -> quantize pattern to oneDNN's int8 kernels (``qlinear_pointwise``).

On a CPU with bf16 instructions (AVX512-BF16 or AMX-BF16), attention itself (q k^T, softmax, times v)
runs in bf16 between the int8 Linears (``attention="bf16"``, chosen by ``"auto"``): the PT2E flow has no
int8 attention kernel for the CPU, and bf16 halves the attention's time there against fp32.

``mixed_bf16=True`` is PyTorch's "int8-mixed-bf16" recipe: the compiled graph runs under bf16 autocast,
so what is not an int8 matmul (LayerNorm, GELU, the residual adds, the dequantized outputs between
layers) is bf16 instead of fp32: half the memory traffic of those memory-bound ops. Only for CPUs
with bf16 instructions; elsewhere bf16 is emulated and slower.

CPUs without VNNI (AVX2-only x86) multiply uint8 x int8 through 16-bit intermediate sums that
saturate for full-range activations, so there the activations use 7 bits (``reduce_range``),
as the quantizer's documentation advises.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch._inductor.config as inductor_config
from torch import nn

from vitkit.engine.device import cpu_has_bf16
from vitkit.errors import VitkitError
from vitkit.layers.attention import Attention
from vitkit.layers.helpers import attributes_set

ATTENTION_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


class _Frozen(nn.Module):
    """Runs a compiled graph with inductor freezing on (compiling happens at the first call)."""

    def __init__(self, compiled: nn.Module, mixed_bf16: bool = False):
        super().__init__()
        self.compiled, self.mixed_bf16 = compiled, mixed_bf16

    def forward(self, x: torch.Tensor):
        with inductor_config.patch(freezing=True), torch.autocast("cpu", torch.bfloat16, enabled=self.mixed_bf16):
            out = self.compiled(x)
        return out.float() if self.mixed_bf16 and isinstance(out, torch.Tensor) else out  # fp32 logits


def _pt2e():
    """(prepare_pt2e, convert_pt2e, X86InductorQuantizer module), or a clear error without torchao."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise VitkitError("static int8 needs torchao: pip install 'vitkit[quant]' (or pip install torchao)") from None
    return prepare_pt2e, convert_pt2e, xiq


def attention_dtype(attention: str = "auto") -> torch.dtype | None:
    """The attention core's dtype in a static int8 model: ``auto`` = bf16 where the CPU has bf16
    instructions, else fp32 (None: the dtype of the activations)."""
    if attention == "auto":
        attention = "bf16" if cpu_has_bf16() else "fp32"
    if attention not in ATTENTION_DTYPES:
        raise VitkitError(f"unknown attention dtype '{attention}'; use auto, {', '.join(ATTENTION_DTYPES)}")
    return ATTENTION_DTYPES[attention]


def convert_static_int8(model: nn.Module, calib_batches: Iterable[torch.Tensor],
                        attention: str = "auto") -> torch.fx.GraphModule:
    """Steps 1-4: the calibrated, converted graph (quantize / dequantize ops with constant scales).
    ``calib_batches``: image batches (B, C, H, W) with B >= 2, the first one also traced.
    ``attention``: the dtype of the attention core (``auto``, ``bf16`` or ``fp32``; :func:`attention_dtype`)."""
    core = attention_dtype(attention)
    batches = list(calib_batches)
    if not batches:
        raise VitkitError("static int8 needs at least one calibration batch")
    if batches[0].ndim != 4 or batches[0].shape[0] < 2:
        raise VitkitError(f"calibration batches must be (B, C, H, W) with B >= 2, got {tuple(batches[0].shape)}")
    model = model.eval()  # its forward: a class-token ViT's last block computes the class token only
    prepare_pt2e, convert_pt2e, xiq = _pt2e()
    quantizer = xiq.X86InductorQuantizer()
    reduce_range = not torch.cpu._is_vnni_supported()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    with warnings.catch_warnings():  # export / observer notices
        warnings.simplefilter("ignore")
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        with attributes_set(layers, "core_dtype", core):  # each attention core in `core` while captured
            graph = torch.export.export(model, (batches[0],), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for x in batches:  # (B, C, H, W)
                prepared(x)
        return convert_pt2e(prepared)


def quantize_static_int8(model: nn.Module, calib_batches: Iterable[torch.Tensor], compile: bool = True,
                         mode: str = "default", attention: str = "auto", mixed_bf16: bool = False) -> nn.Module:
    """Static int8 inference model (steps 1-5); ``compile=False`` returns the eager reference graph.
    CPU only; inference only. The first call of the compiled model compiles it (tens of seconds;
    minutes with ``mode="max-autotune"``, which also times inductor's own GEMM kernels).
    ``attention``: the attention core's dtype (:func:`attention_dtype`); ``mixed_bf16``: the ops
    between the int8 matmuls in bf16 (compiled only; see the module docstring)."""
    converted = convert_static_int8(model, calib_batches, attention)
    if not compile:
        if mixed_bf16:
            raise VitkitError("mixed_bf16 applies to the compiled model; use compile=True")
        return converted
    if mixed_bf16:
        drop_dtype_asserts(converted)
    return compile_frozen(converted, mode, mixed_bf16)


def drop_dtype_asserts(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove ``torch.export``'s dtype checks (``aten._assert_tensor_metadata``, recorded at each ``.to``):
    they pin the fp32 dtypes of the capture, which bf16 autocast changes on purpose. In place."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.graph.erase_node(node)
    graph.recompile()
    return graph


def compile_frozen(model: nn.Module, mode: str = "default", mixed_bf16: bool = False) -> nn.Module:
    """``torch.compile`` for inference with inductor freezing: weights become graph constants, so
    they are prepacked once for oneDNN (fp32 / bf16) and int8 patterns lower to int8 kernels.
    Shapes are static (one compile per batch size): with a symbolic batch size, inductor's int8
    convolution (a conv stem) expects the wrong memory layout in torch 2.14. ``mixed_bf16``: run
    under bf16 autocast, the logits returned in fp32."""
    return _Frozen(torch.compile(model, dynamic=False, mode=mode), mixed_bf16)


def graph_targets(graph: torch.fx.GraphModule) -> list[str]:
    """The names of the operators a converted graph calls, in order (for inspection and tests)."""
    return [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
