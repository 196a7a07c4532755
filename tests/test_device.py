"""Device, precision and determinism: decided once, clear errors, fp16 loss scaling, no per-step sync."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from vitkit import VitkitError
from vitkit.cli import main
from vitkit.commands.options import device_of
from vitkit.engine import device as device_mod
from vitkit.engine import loop, trainer
from vitkit.engine.checkpoint import load_checkpoint
from vitkit.engine.device import CUBLAS_WORKSPACE, autocast, grad_scaler, resolve_device, set_determinism
from vitkit.engine.distributed import DistInfo
from vitkit.engine.run_config import RunConfig, resolve

TINY = {"model.img_size": "8", "model.patch_size": "2", "data.limit_train": "96", "data.limit_val": "40",
        "batch_size": "16", "epochs": "1", "tensorboard": "false", "progress": "false", "threads": "1",
        "schedule.warmup_steps": "2", "optim.lr": "3e-3", "deterministic": "true"}
MISSING_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (or any GPU on a CPU machine)


def tiny_cfg(tmp_path, device: str, **extra) -> RunConfig:
    sets = {**TINY, "device": device, "out_dir": str(tmp_path / "run"),
            **{k.replace("__", "."): str(v) for k, v in extra.items()}}
    return resolve(RunConfig(model="vit_test"), sets)


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(VitkitError, match="unknown device 'tpu'; use one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device("tpu")
    with pytest.raises(VitkitError, match="cuda"):
        resolve_device(MISSING_GPU)
    if torch.cuda.is_available():
        last = torch.cuda.device_count() - 1
        assert resolve_device("cuda", local_rank=last) == torch.device("cuda", last)
        assert resolve_device("auto", local_rank=last) == torch.device("cuda", last)
    else:
        with pytest.raises(VitkitError, match="not available.*--device cpu"):
            resolve_device("cuda")
    if torch.backends.mps.is_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(VitkitError, match="mps is not available"):
            resolve_device("mps")


@pytest.mark.parametrize("argv", [
    ["train", "--model", "vit_test", "--out", "{tmp}/run"],
    ["eval", "{tmp}/no_run"],
    ["predict", "{tmp}/no_run", "{tmp}/x.png"],
    ["explain", "vit_test", "{tmp}/x.png"],
    ["export", "vit_test", "--out", "{tmp}/m.onnx"],
    ["bench", "vit_test", "--iters", "1", "--warmup", "0"],
])
def test_missing_device_is_one_line_exit_2(argv, tmp_path, capsys):
    """Every command with --device: a GPU that is not there is exit code 2 and one line."""
    assert main([a.format(tmp=tmp_path) for a in argv] + ["--device", MISSING_GPU]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and MISSING_GPU.split(":")[0] in err and err.startswith(f"vitkit {argv[0]}: error:")
    assert main([a.format(tmp=tmp_path) for a in argv] + ["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_determinism_per_device():
    """auto: on for CPU, off for CUDA; on for CUDA sets CUBLAS_WORKSPACE_CONFIG and cuDNN's mode."""
    saved_env = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        assert set_determinism("auto", torch.device("cpu")) is True
        assert torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert set_determinism("auto", torch.device("cuda")) is False
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert set_determinism(True, torch.device("cuda")) is True
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert set_determinism(False, torch.device("cpu")) is False and not torch.are_deterministic_algorithms_enabled()
    finally:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if saved_env is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_env
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_and_scaler_follow_precision(device, precision, dtype):
    dev = torch.device(device)
    a, b = torch.randn(4, 8, device=dev), torch.randn(8, 3, device=dev)
    with autocast(precision, dev):
        assert (a @ b).dtype == dtype
    with autocast("fp32", dev):
        assert (a @ b).dtype == torch.float32
    assert grad_scaler(precision, dev).is_enabled() == (precision == "fp16")
    assert not grad_scaler("fp32", dev).is_enabled()


def test_fp16_scaler_state_is_checkpointed(tmp_path, device):
    """The GradScaler's scale travels in the checkpoint and comes back on resume."""
    cfg = tiny_cfg(tmp_path, device, precision="fp16")
    info = DistInfo(device=torch.device(device))
    run = trainer.prepare(cfg, tmp_path / "run", info)
    assert run.scaler.is_enabled()
    run.scaler.scale(torch.ones((), device=info.device))  # the scale exists from the first use
    run.scaler.update(new_scale=1024.0)
    run.global_step = 3
    trainer.save_state(run, 0, 3)
    state = load_checkpoint(tmp_path / "run", trainer.D.unwrap(run.model))
    assert state["scaler"]["scale"] == 1024.0
    fresh = trainer.prepare(cfg, tmp_path / "run", info)
    assert trainer.restore(fresh)[:2] == (0, 3)
    assert fresh.scaler.get_scale() == 1024.0 and fresh.global_step == 3


def test_channels_last_is_a_training_option(tmp_path, device):
    cfg = tiny_cfg(tmp_path, device, channels_last="true", model__patch_size="2")
    run = trainer.prepare(cfg, tmp_path / "run", DistInfo(device=torch.device(device)))
    convs = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(p.device.type == device for p in run.model.parameters())
    metrics = trainer.train(cfg)
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["n"] == 40


def test_running_sums_are_read_at_log_intervals_only(tmp_path, device, monkeypatch):
    """Loss and accuracy stay on the device between log intervals: 6 steps, log_every=4 ->
    reads after step 4 and at the epoch's end. On CUDA any other host sync in the loop is an error."""
    reads, original = [], loop._refresh

    def counted(run, stats, sums, epoch, batches, bar):
        reads.append(batches)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        original(run, stats, sums, epoch, batches, bar)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(loop, "_refresh", counted)
    cfg = tiny_cfg(tmp_path, device, log_every="4", eval_every="2", epochs="2")
    run = trainer.prepare(cfg, tmp_path / "run", DistInfo(device=torch.device(device)))
    loader, sampler = trainer.D.train_loader(run.bundle.train, cfg.batch_size, cfg.seed, run.info)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        stats = loop.train_one_epoch(run, loader, 0, 0, loop.StopFlag())
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    assert reads == [4, 6] and stats.batches_done == 6 and run.global_step == 6
    assert stats.count == 96 and 0 <= stats.correct <= 96 and stats.loss > 0


# Allocates 64 MiB (over glibc's largest mmap threshold, 32 MiB), frees it, and reads glibc's own counters:
# bytes in mmapped blocks while it lives (hblkhd), and whether malloc's heap (arena) still holds it once freed.
HOST_PROBE = """
import ctypes, torch
from vitkit.engine.device import keep_host_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = keep_host_memory()
heap = libc.mallinfo2().arena
x = torch.ones(64 * 2**20 // 4)
mapped = libc.mallinfo2().hblkhd >= 64 * 2**20
del x
print(kept, mapped, libc.mallinfo2().arena - heap >= 64 * 2**20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (a no-op elsewhere)")
@pytest.mark.parametrize("env, expected", [("keep", "True False True"), ("default", "False True False")])
def test_keep_host_memory_keeps_big_blocks_in_the_heap(env, expected):
    """Kept: a 64 MiB tensor comes from malloc's heap and stays there once freed (no fresh pages next time);
    VITKIT_HOST_MEMORY=default: glibc maps it from fresh pages and unmaps it when freed."""
    run = subprocess.run([sys.executable, "-c", HOST_PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, device_mod.HOST_MEMORY_ENV: env})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == expected.split()


@pytest.mark.parametrize("host_memory, calls", [("keep", 1), ("default", 0)])
def test_cpu_commands_and_trainer_keep_host_memory(tmp_path, monkeypatch, host_memory, calls):
    seen = []
    monkeypatch.setattr(device_mod, "keep_host_memory", lambda: seen.append("cli") or True)
    monkeypatch.setattr(trainer, "keep_host_memory", lambda: seen.append("train") or True)
    assert device_of(Namespace(device="cpu", host_memory=host_memory)) == torch.device("cpu")
    assert seen == ["cli"] * calls
    trainer.prepare(tiny_cfg(tmp_path, "cpu"), tmp_path / "run", DistInfo(device=torch.device("cpu")))
    assert seen[-1] == "train"


def test_cpu_bf16_follows_the_cpu_flags(monkeypatch):
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        assert "fpu" in device_mod.cpu_flags()  # read from /proc/cpuinfo
    cases = (({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True), ({"avx2", "avx512f"}, False),
             (set(), False))
    for flags, has in cases:
        monkeypatch.setattr(device_mod, "cpu_flags", lambda f=flags: f)
        assert device_mod.cpu_has_bf16() is has
