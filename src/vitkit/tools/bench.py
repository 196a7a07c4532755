"""Benchmarks: model steps (``vitkit bench``) and the data path's per-item cost.

1. Measurement: wall time of a step, peak memory of a step, the machine's matmul peak.
   FLOPs come from the one FLOP counter, :func:`vitkit.tools.flops.flops_of`.
2. Model steps: a step is one forward pass (inference, ``torch.inference_mode``) or one
   training step (forward, cross-entropy, backward, optimizer update: SGD with momentum or AdamW,
   in the chosen kernel; optionally the whole step in one ``torch.compile``d function). Throughput = batch /
   median step time; achieved FLOP/s = counted FLOPs of a step / median step time, shown as a
   fraction of the matmul peak for the dtype. With ``compare="timm"`` the equivalent timm
   model runs in the same process, interleaved.
3. Data path: ``python -m vitkit.tools.bench [--items N] [--threads T]`` times ``dataset[i]``
   (transform included) for each data set / augmentation pair in one process, the way a
   DataLoader worker runs it, and prints microseconds per item.

Peak memory is read from the PyTorch profiler's allocator events: every allocation and free by
PyTorch during one step, in time order; the peak is the highest running total. It counts what
the step allocates beyond what already existed (weights, inputs, optimizer state), is exact and
independent of the OS allocator's caching (unlike RSS).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.data import DataConfig, build_data
from vitkit.data.datasets import ArrayDataset
from vitkit.engine.device import autocast, synchronize
from vitkit.engine.optim import IMPL_KWARGS, make_optimizer
from vitkit.errors import VitkitError
from vitkit.registry import create_model
from vitkit.tools.flops import flops_of
from vitkit.tools.quantize import quantize_static_int8

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8, "int8-static": torch.int8,
          "int8-static-bf16": torch.int8}
STATIC = ("int8-static", "int8-static-bf16")  # calibrated scales, compiled; -bf16: the other ops in bf16
INT8 = ("int8", *STATIC)  # dynamic: activations quantized per batch
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZERS = {"sgd": (torch.optim.SGD, {"lr": 1e-4, "momentum": 0.9}),
              "adamw": (torch.optim.AdamW, {"lr": 1e-4, "weight_decay": 0.05})}


# ---------------------------------------------------------------- measurement
def time_steps(step: Callable[[], object], iters: int, warmup: int, device: str = "cpu") -> list[float]:
    """Wall seconds of each of ``iters`` calls of ``step`` after ``warmup`` untimed calls (on an
    accelerator, each call is timed until its queued work has finished)."""
    dev = torch.device(device)
    for _ in range(warmup):
        step()
    synchronize(dev)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    return times


def interleaved_times(steps: list[Callable[[], object]], rounds: int, iters: int, warmup: int,
                      before_round: Callable[[], None] = lambda: None, device: str = "cpu") -> list[list[float]]:
    """Step times of each of ``steps``, run in turn (A, B, ..., A, B, ...) for ``rounds`` rounds of
    ``iters`` calls after ``warmup`` untimed calls each, so load from other jobs hits all alike."""
    for step in steps:
        time_steps(step, 0, warmup, device)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        before_round()
        for step, acc in zip(steps, times, strict=True):
            acc += time_steps(step, iters, 0, device)
    return times


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's C++ log lines (file descriptor 2) for the duration."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_memory_bytes(step: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated by PyTorch on ``device`` during one call of ``step`` (on CUDA: from
    the caching allocator's statistics, beyond what was allocated before the step)."""
    if torch.device(device).type == "cuda":
        synchronize(torch.device(device))
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(torch.device(device))
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    kind = f"DeviceType.{torch.device(device).type.upper()}"
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()) == kind]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()  # + allocation, - free
        peak = max(peak, total)
    return peak


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """The device's practical peak FLOP/s: best of ``reps`` large square matmuls (2 n^3 FLOPs);
    int8: ``torch._int_mm`` (int8 x int8 -> int32, the VNNI kernel), counted as int8 operations/s."""
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        mm = torch._int_mm
    else:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        mm = torch.mm
    mm(a, b)  # warm-up (thread pool, kernel selection)
    best = min(time_steps(lambda: mm(a, b), reps, 1, device))
    return 2 * n**3 / best


class _SquareLinear(nn.Module):
    """(2, 1, n / 2, n) -> one n x n Linear on its n rows: an image-shaped input for the quantizer."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.linear = n, nn.Linear(n, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(-1, self.n))  # (n, n)


def static_int8_peak(n: int = 2048, reps: int = 5) -> float:
    """The practical peak of the ``int8-static`` mode: best of ``reps`` n x n x n products by a
    calibrated, compiled int8 Linear (oneDNN's ``qlinear_pointwise``, the kernel quantized models
    run), as int8 operations/s (2 n^3 each). CPU only. On CPUs without VNNI ``torch._int_mm`` is not
    a vectorised kernel, so it does not measure what this mode can reach."""
    n = max(2, n - n % 2)
    x = torch.randn(2, 1, n // 2, n, generator=torch.Generator().manual_seed(0))
    q = quantize_static_int8(_SquareLinear(n).eval(), [x])
    with torch.inference_mode():
        q(x)  # compiles
        best = min(time_steps(lambda: q(x), reps, 1, "cpu"))
    return 2 * n**3 / best


def mode_peak(dtype: str, n: int = 2048, device: str = "cpu") -> float:
    """The peak that a ``--dtype`` mode's achieved FLOP/s is a fraction of (see :func:`matmul_peak`)."""
    if dtype in STATIC:
        with warnings.catch_warnings():  # inductor's constant-folding notices
            warnings.simplefilter("ignore")
            return static_int8_peak(n)
    return matmul_peak(DTYPES[dtype], n=n, device=device)


# ---------------------------------------------------------------- model steps
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
    device: str = "cpu"  # a resolved torch device name: cpu, cuda:0, mps
    overrides: dict = field(default_factory=dict)  # model-config overrides (--set model.KEY=VALUE)
    optimizer: str = "sgd"  # the training step's update: sgd (with momentum) or adamw
    optim_impl: str = "auto"  # its kernel: auto, fused, foreach, for-loop
    compile_step: bool = False  # torch.compile the whole training step (forward, backward, update)
    compile_backend: str = "inductor"  # torch.compile's backend (eager: trace only, for tests)
    compile_mode: str = "default"  # torch.compile's mode: default or max-autotune (inductor's GEMM templates)

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise VitkitError(f"unknown dtype '{self.dtype}'; choose one of {', '.join(DTYPES)}")
        if self.batch_size < 1 or self.iters < 1 or self.warmup < 0 or self.rounds < 1:
            raise VitkitError("batch size and iters must be >= 1 and warmup >= 0")
        if self.dtype in INT8 and (self.train or self.channels_last):
            raise VitkitError(f"{self.dtype} is for inference only (quantized Linear layers); "
                              "drop --train / --channels-last or use fp32 or bf16")
        if self.dtype in INT8 and torch.device(self.device).type != "cpu":
            raise VitkitError(f"{self.dtype} (int8 quantization) runs on the CPU only; use --device cpu or fp32 / bf16")
        if self.optimizer not in OPTIMIZERS or self.optim_impl not in IMPL_KWARGS:
            raise VitkitError(f"unknown optimizer '{self.optimizer}' / implementation '{self.optim_impl}'; choose "
                              f"{' or '.join(OPTIMIZERS)} and one of {', '.join(IMPL_KWARGS)}")
        if self.compile_step and (not self.train or self.compile):
            raise VitkitError("--compile-step compiles a training step (with --train), the model's forward "
                              "included; use it without --compile (or --compile alone for inference)")
        if self.compile_mode not in COMPILE_MODES:
            raise VitkitError(f"unknown compile mode '{self.compile_mode}'; choose one of {', '.join(COMPILE_MODES)}")
        if self.compile_mode != "default" and not (self.compile or self.compile_step or self.dtype in STATIC):
            raise VitkitError(f"--compile-mode {self.compile_mode} needs something compiled: "
                              "--compile, --compile-step or --dtype int8-static(-bf16)")
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
    target = torch.randint(0, n_cls, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    cls, kwargs = OPTIMIZERS[cfg.optimizer]
    opt = make_optimizer(cls, model.parameters(), cfg.optim_impl, **kwargs)
    precision = "bf16" if cfg.dtype == "bf16" else "fp32"

    def train():
        opt.zero_grad(set_to_none=True)
        with autocast(precision, x.device):
            loss = _loss(model(x), target)
        loss.backward()
        opt.step()
        return loss
    step = torch.compile(train, backend=cfg.compile_backend, mode=cfg.compile_mode) if cfg.compile_step else train
    step.optimizer = opt  # what the step updates with (for inspection)
    return step


def input_batch(model: nn.Module, cfg: BenchConfig) -> torch.Tensor:
    """Random images (B, C, H, W) at the (vitkit) model's input size, ``model.preprocess``."""
    pre = model.preprocess
    x = torch.randn(cfg.batch_size, pre.in_chans, *pre.img_size, generator=torch.Generator().manual_seed(cfg.seed))
    return x.to(cfg.device)


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear (weights int8 per tensor, activations quantized
    per batch at run time; fbgemm's VNNI kernels on x86). Inference only; outputs change slightly."""
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


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
    if cfg.dtype in STATIC:  # calibrated on the bench batch itself; always compiled (int8 kernels)
        mixed = cfg.dtype == "int8-static-bf16"
        return quantize_static_int8(model, [x], mode=cfg.compile_mode, mixed_bf16=mixed), x, model
    if cfg.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if cfg.compile and not cfg.train:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # inference: fold weights into the graph (oneDNN prepacking)
    runnable = torch.compile(model, backend=cfg.compile_backend, mode=cfg.compile_mode) if cfg.compile else model
    return runnable, x, model


def make_runner(label: str, model: nn.Module, x: torch.Tensor, cfg: BenchConfig,
                peak_flops: float) -> tuple[Callable, Callable]:
    """(timed step, finaliser) for one model; the finaliser turns step times into a result."""
    if cfg.dtype in INT8:  # the quantized ops are not counted by the FLOP counter: count the fp32 model
        flops = flops_of(make_step(model.train(False), x, replace(cfg, compile=False, dtype="fp32"))).total
    runnable, x, plain = prepare(model, x, cfg)
    step = make_step(runnable, x, cfg)
    if cfg.dtype not in INT8:
        flops = flops_of(make_step(plain, x, replace(cfg, compile=False, compile_step=False))).total
    params = sum(p.numel() for p in plain.parameters())

    def finish(times: list[float]) -> BenchResult:
        mem = peak_memory_bytes(step, cfg.device) if cfg.memory else None
        t = statistics.median(times)
        return BenchResult(label, t, cfg.batch_size / t, mem, params, flops, flops / t, flops / t / peak_flops)
    return step, finish


def timm_equivalent(model: nn.Module) -> nn.Module:
    """A ``timm.models.vision_transformer.VisionTransformer`` built with the same arguments as a
    plain vitkit ViT (``--compare timm``)."""
    c = getattr(model, "config", None)
    if getattr(model, "family", "") != "vit" or c.hybrid_backbone or c.distilled or c.conv_stem:
        raise VitkitError(f"--compare timm supports plain ViT presets only, not {type(model).__name__}"
                          f"{' (hybrid/distilled/conv stem)' if getattr(model, 'family', '') == 'vit' else ''}")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise VitkitError("--compare timm needs timm: pip install timm") from None
    return VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
        global_pool=c.global_pool, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
        mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, init_values=c.init_values,
        class_token=c.class_token, fc_norm=c.fc_norm, drop_rate=c.drop_rate,
        attn_drop_rate=c.attn_drop_rate, drop_path_rate=c.drop_path_rate,
    )


def build_models(cfg: BenchConfig) -> list[tuple[str, nn.Module]]:
    """[("vitkit", model)] plus ("timm", equivalent) when comparing."""
    torch.manual_seed(cfg.seed)
    overrides = {**cfg.overrides, **({"img_size": cfg.img_size} if cfg.img_size else {})}
    model = create_model(cfg.model, **overrides)
    models = [("vitkit", model)]
    if cfg.compare == "timm":
        models.append(("timm", timm_equivalent(model)))
    return [(label, m.to(cfg.device)) for label, m in models]


def run_bench(cfg: BenchConfig, peak_flops: float | None = None) -> list[BenchResult]:
    """Benchmark the model (and its reference), interleaving rounds so load hits both alike."""
    cfg.validate()
    peak_flops = peak_flops or mode_peak(cfg.dtype, device=cfg.device)
    models = build_models(cfg)
    x = input_batch(models[0][1], cfg)
    runners = [make_runner(label, m, x, cfg, peak_flops) for label, m in models]
    times = interleaved_times([step for step, _ in runners], cfg.rounds, max(1, cfg.iters // cfg.rounds),
                              cfg.warmup, device=cfg.device)
    return [finish(t) for (_, finish), t in zip(runners, times, strict=True)]


# ---------------------------------------------------------------- data path
DATA_CASES = (
    ("fashion-mnist", dict(augment="none")),
    ("fashion-mnist", dict(augment="basic")),
    ("fashion-mnist", dict(augment="basic", img_size=32)),
    ("fashion-mnist", dict(augment="randaugment")),
    ("digits", dict(augment="basic")),
    ("seg-canvas", dict(augment="basic", canvas_train_size=2000)),
)


def time_items(dataset, n: int) -> float:
    """Median over 3 runs of the mean seconds per ``dataset[i]`` over ``n`` items."""
    n = min(n, len(dataset))

    def run(count: int) -> None:
        for i in range(count):
            dataset[i]
    run(min(100, n))  # warm-up
    return statistics.median(time_steps(lambda: run(n), 3, 0)) / n


def v2_baseline(bundle) -> torch.utils.data.Dataset:
    """The same basic augmentation as a torchvision.transforms.v2.Compose, for comparison."""
    from torchvision.transforms import v2

    ops = v2.Compose([
        v2.RandomCrop(bundle.img_size, padding=2), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(bundle.mean), list(bundle.std)),
    ])
    base = bundle.train.dataset if isinstance(bundle.train, torch.utils.data.Subset) else bundle.train
    return ArrayDataset(base.images, base.labels, ops)


def main(argv=None) -> None:
    """Print the data path's per-item cost (us per ``dataset[i]``) for each case of ``DATA_CASES``."""
    parser = argparse.ArgumentParser(description="Per-item transform cost of the data sets (us per dataset[i]).")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'data set':15s} {'options':45s} {'us/item':>8s}")
    for name, opts in DATA_CASES:
        bundle = build_data(DataConfig(name=name, **opts))
        print(f"{name:15s} {str(opts):45s} {time_items(bundle.train, args.items) * 1e6:8.1f}")
        if name == "fashion-mnist" and opts == {"augment": "basic"}:
            ref = time_items(v2_baseline(bundle), args.items)
            print(f"{name:15s} {'(v2.Compose crop+flip+normalise, reference)':45s} {ref * 1e6:8.1f}")


if __name__ == "__main__":
    main()
