"""Where a run computes, decided once at the top of the engine: device, precision, determinism.

``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
``precision``: ``fp32``; ``bf16`` (``torch.autocast``); ``fp16`` (autocast + ``GradScaler``,
which scales the loss so fp16 gradients do not underflow and skips steps whose gradients overflow).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re

import torch

from vitkit.errors import VitkitError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for reproducible matmuls (CUDA docs, "Reproducibility")
HOST_MEMORY_ENV = "VITKIT_HOST_MEMORY"  # "default" leaves the C library's malloc as it is
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (glibc's malloc.h)
_host_memory_kept = False


def _cuda_missing() -> str:
    built = torch.version.cuda is not None
    why = "no CUDA GPU is visible" if built else "this torch build has no CUDA support"
    return f"device cuda is not available ({why}); use --device cpu or --device auto"


_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")


def check_device_name(spec: str) -> None:
    """A well-formed device name (whether it exists is checked when the run starts)."""
    if _DEVICE_NAME.fullmatch(str(spec).strip().lower()) is None:
        raise VitkitError(f"unknown device '{spec}'; use one of {', '.join(DEVICES)}")


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device for ``spec``; under torchrun ``cuda`` (and ``auto``) mean ``cuda:LOCAL_RANK``."""
    text = str(spec).strip().lower()
    check_device_name(text)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VitkitError("device mps is not available (needs Apple silicon and a torch build with MPS); "
                              "use --device cpu")
        return torch.device("mps")
    match = _DEVICE_NAME.fullmatch(text)
    if not torch.cuda.is_available():
        raise VitkitError(_cuda_missing())
    index = int(match.group(1)) if match.group(1) is not None else (local_rank or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise VitkitError(f"device cuda:{index} does not exist: {count} GPU(s) visible (cuda:0..cuda:{count - 1})"
                          + ("; start at most one process per GPU" if match.group(1) is None else ""))
    return torch.device("cuda", index)


def keep_host_memory() -> bool:
    """Keep freed host memory in the process, so that big CPU tensors reuse pages already mapped.

    glibc's malloc maps a big block (a ViT-S/16 activation at batch 32 is 10-39 MiB) from fresh pages and
    returns it, with the free top of its heap, to the kernel when it is freed. The next tensor of that size
    then takes a page fault for every 4 KiB on its first write: a fifth of a CPU training step of
    ``vit_small_patch16_224`` (docs/explain_export_bench.md). This sets ``M_MMAP_MAX`` to 0 (every block from
    malloc's heap) and ``M_TRIM_THRESHOLD`` to its maximum (the heap is not trimmed), once per process; the
    resident memory then stays at the run's peak. The CLI commands and the trainer call it for the CPU.
    Returns whether the setting is on: False with ``VITKIT_HOST_MEMORY=default`` or a C library other
    than glibc (macOS, Windows, musl), where nothing changes.
    """
    global _host_memory_kept
    if _host_memory_kept or os.environ.get(HOST_MEMORY_ENV, "keep") == "default":
        return _host_memory_kept
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: the mallopt parameters are glibc's)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _host_memory_kept = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _host_memory_kept


def host_memory_kept() -> bool:
    """Whether :func:`keep_host_memory` is on in this process."""
    return _host_memory_kept


def cpu_flags() -> set[str]:
    """The x86 feature flags of this CPU from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16), not by emulation."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def use_device(device: torch.device) -> None:
    """Make ``device`` the current CUDA device (one process per GPU under torchrun)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def autocast(precision: str, device: torch.device | str = "cpu"):
    """``torch.autocast`` for bf16 / fp16 on ``device``; nothing for fp32."""
    dtype = PRECISIONS.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A ``GradScaler`` for fp16 (a pass-through for fp32 and bf16, whose range needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def set_determinism(deterministic: bool | str, device: torch.device) -> bool:
    """Deterministic algorithms on or off; ``auto`` = on for CPU, off for CUDA/MPS. Returns the choice.

    On CUDA, on also sets ``CUBLAS_WORKSPACE_CONFIG`` (unless set) and cuDNN's deterministic mode;
    off lets cuDNN pick the fastest convolution algorithm (``cudnn.benchmark``).
    """
    on = device.type == "cpu" if deterministic == "auto" else bool(deterministic)
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = on
        torch.backends.cudnn.benchmark = not on
    torch.use_deterministic_algorithms(on, warn_only=True)
    return on


def to_device(x, device: torch.device):
    """Copy a tensor (or a list/tuple of them) to ``device``; asynchronous from pinned CPU memory."""
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if not isinstance(x, torch.Tensor) or x.device == device:
        return x
    return x.to(device, non_blocking=device.type == "cuda")


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders should pin host memory (it speeds up copies to a CUDA device only)."""
    return device.type == "cuda"


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The accelerator's RNG state (dropout on the device draws from it), or None on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def set_device_rng_state(state: torch.Tensor | None, device: torch.device) -> None:
    if state is None:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
