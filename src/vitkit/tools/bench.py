"""``vitkit bench``: throughput, step latency, peak memory, params and FLOPs of any model.

A step is one forward pass (inference, ``torch.inference_mode``) or one training step
(forward, cross-entropy, backward, SGD-momentum update). Throughput = batch / median step
time; achieved FLOP/s = counted FLOPs of a step / median step time, shown as a fraction of
the machine's matmul peak for the dtype (:func:`vitkit.tools.measure.matmul_peak`).
With ``compare="timm"`` the equivalent timm model runs in the same process, interleaved.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.errors import VitkitError
from vitkit.tools.measure import count_flops, matmul_peak, median, peak_memory_bytes, time_steps

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    batch_size: int = 32
    img_size: int | None = None
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    train: bool = False
    grad_checkpointing: bool = False
    iters: int = 10
    warmup: int = 3
    rounds: int = 3  # interleaved rounds per model when comparing
    compare: str | None = None
    memory: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise VitkitError(f"unknown dtype '{self.dtype}'; choose one of {', '.join(DTYPES)}")
        if self.batch_size < 1 or self.iters < 1 or self.warmup < 0 or self.rounds < 1:
            raise VitkitError("batch size and iters must be >= 1 and warmup >= 0")
        if self.dtype == "int8" and (self.train or self.channels_last):
            raise VitkitError("int8 is for inference only (dynamic quantization of the Linear layers); "
                              "drop --train / --channels-last or use fp32 or bf16")
        if self.compare not in (None, "timm"):
            raise VitkitError(f"cannot compare with '{self.compare}'; the only reference is 'timm'")


class BenchResult(NamedTuple):
    label: str
    step_s: float  # median seconds per step
    imgs_per_s: float
    peak_mem_bytes: int | None
    params: int
    flops_per_step: int
    achieved_flops: float  # FLOP/s
    peak_fraction: float  # achieved / matmul peak of the dtype


def _loss(out, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on every output tensor (a distilled model returns two); dense: per pixel."""
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    total = 0.0
    for o in outs:
        t = target if o.ndim == 2 else target[:, None, None].expand(-1, *o.shape[-2:])
        total = total + F.cross_entropy(o.float(), t)
    return total


def make_step(model: nn.Module, x: torch.Tensor, cfg: BenchConfig) -> Callable[[], object]:
    """A closure running one inference or training step of ``model`` on batch ``x``."""
    if not cfg.train:
        def infer():
            with torch.inference_mode():
                return model(x)
        return infer
    n_cls = max(1, getattr(getattr(model, "config", None), "num_classes", 0) or 1)
    target = torch.randint(0, n_cls, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.dtype == "bf16"
                else contextlib.nullcontext())

    def train():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = _loss(model(x), target)
        loss.backward()
        opt.step()
        return loss
    return train


def input_batch(model: nn.Module, cfg: BenchConfig) -> torch.Tensor:
    """Random images (B, C, H, W) of the (vitkit) model's configured size."""
    c = model.config
    size = (c.img_size, c.img_size) if isinstance(c.img_size, int) else tuple(c.img_size)
    return torch.randn(cfg.batch_size, c.in_chans, *size, generator=torch.Generator().manual_seed(cfg.seed))


def prepare(model: nn.Module, x: torch.Tensor, cfg: BenchConfig) -> tuple[nn.Module, torch.Tensor, nn.Module]:
    """(runnable model, input batch, plain model) per dtype / channels-last / compile / mode."""
    model.train(cfg.train)
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise VitkitError(f"{type(model).__name__} has no gradient checkpointing option")
        model.set_grad_checkpointing(True)
    if cfg.dtype == "bf16" and not cfg.train:  # inference: bf16 weights; training: bf16 autocast
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    if cfg.dtype == "int8":
        model = quantize_linear_int8(model)
    if cfg.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if cfg.compile and not cfg.train:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # inference: fold weights into the graph (oneDNN prepacking)
    runnable = torch.compile(model) if cfg.compile else model
    return runnable, x, model


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear (weights int8 per tensor, activations quantized
    per batch at run time; fbgemm's VNNI kernels on x86). Inference only; outputs change slightly."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def measure(label: str, model: nn.Module, x: torch.Tensor, cfg: BenchConfig,
            peak_flops: float) -> tuple[Callable, Callable]:
    """(timed step, finaliser) for one model; the finaliser turns step times into a result."""
    if cfg.dtype == "int8":  # the quantized ops are not counted by the FLOP counter: count the fp32 model
        flops = count_flops(make_step(model.train(False), x, replace(cfg, compile=False, dtype="fp32")))
    runnable, x, plain = prepare(model, x, cfg)
    step = make_step(runnable, x, cfg)
    if cfg.dtype != "int8":
        flops = count_flops(make_step(plain, x, replace(cfg, compile=False)))
    params = sum(p.numel() for p in plain.parameters())

    def finish(times: list[float]) -> BenchResult:
        mem = peak_memory_bytes(step) if cfg.memory else None
        t = median(times)
        return BenchResult(label, t, cfg.batch_size / t, mem, params, flops, flops / t, flops / t / peak_flops)
    return step, finish


def build_models(cfg: BenchConfig) -> list[tuple[str, nn.Module]]:
    """[("vitkit", model)] plus ("timm", equivalent) when comparing."""
    from vitkit.models.hub import load_model

    torch.manual_seed(cfg.seed)
    overrides = {"img_size": cfg.img_size} if cfg.img_size else {}
    model = load_model(cfg.model, **overrides)
    models = [("vitkit", model)]
    if cfg.compare == "timm":
        from vitkit.tools.bench_timm import timm_equivalent

        models.append(("timm", timm_equivalent(model)))
    return models


def run_bench(cfg: BenchConfig, peak_flops: float | None = None) -> list[BenchResult]:
    """Benchmark the model (and its reference), interleaving rounds so load hits both alike."""
    cfg.validate()
    peak_flops = peak_flops or matmul_peak(DTYPES[cfg.dtype])
    models = build_models(cfg)
    x = input_batch(models[0][1], cfg)
    runners = [measure(label, m, x, cfg, peak_flops) for label, m in models]
    for step, _ in runners:
        time_steps(step, 0, cfg.warmup)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(cfg.rounds):
        for (step, _), acc in zip(runners, times):
            acc += time_steps(step, max(1, cfg.iters // cfg.rounds), 0)
    return [finish(t) for (_, finish), t in zip(runners, times)]
