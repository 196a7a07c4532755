"""Measurement primitives for ``vitkit bench``: step timing, peak memory, FLOPs, matmul peak.

Peak memory is read from the PyTorch profiler's allocator events: every
allocation and free by PyTorch during one step, in time order; the peak is the highest running
total. It counts what the step allocates beyond what already existed (weights, inputs,
optimizer state), is exact and independent of the OS allocator's caching (unlike RSS).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable

import torch


def time_steps(step: Callable[[], object], iters: int, warmup: int) -> list[float]:
    """Wall seconds of each of ``iters`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


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
    """Peak bytes allocated by PyTorch on ``device`` during one call of ``step``."""
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


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply + add = 2) of the matmuls/convolutions/attention run by ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """The machine's practical peak FLOP/s: best of ``reps`` large square matmuls (2 n^3 FLOPs);
    int8: ``torch._int_mm`` (int8 x int8 -> int32, the VNNI kernel), counted as int8 operations/s."""
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
        mm = torch._int_mm
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        mm = torch.mm
    mm(a, b)  # warm-up (thread pool, kernel selection)
    best = min(time_steps(lambda: mm(a, b), reps, 1))
    return 2 * n**3 / best
