"""A run SIGKILLed, Ctrl-C'd or preempted (SIGTERM) mid-epoch and resumed ends bit-identical to an
uninterrupted run.

Only the interrupted runs need a process of their own (to be killed); the uninterrupted reference and
the resumes run in-process through ``vitkit.cli.main``, reading everything from the run dirs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from vitkit.cli import main

ARGS = ["--model", "vit_test", "--set", "model.img_size=8", "model.patch_size=2", "data.limit_train=256",
        "data.limit_val=32", "batch_size=16", "epochs=3", "tensorboard=false", "progress=false", "threads=1",
        "schedule.warmup_steps=3", "optim.lr=3e-3", "ema.enabled=true", "ema.decay=0.9"]


def _train(*extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "vitkit.cli", "train", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_after_first_checkpoint(runs, timeout=120.0) -> None:
    """Send each ``(process, run_dir, signal)`` its signal as soon as the run's first checkpoint exists
    (runs polled together, so each one's window is the rest of its own run: epochs 2 and 3)."""
    pending = list(runs)
    deadline = time.monotonic() + timeout
    while pending:
        for proc, run_dir, sig in list(pending):
            if (run_dir / "checkpoint" / "latest.json").exists():
                os.kill(proc.pid, sig)
                pending.remove((proc, run_dir, sig))
            else:
                assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    for proc, _, _ in runs:
        proc.wait(timeout=120)


def _weights(path):
    return load_file(str(path))


def _assert_same_run(full, other) -> None:
    a, b = _weights(full / "model" / "model.safetensors"), _weights(other / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ckpt_a = json.loads((full / "checkpoint" / "latest.json").read_text())
    ckpt_b = json.loads((other / "checkpoint" / "latest.json").read_text())
    for name in ("model.safetensors", "ema.safetensors"):  # raw and EMA weights (state.pt holds timings)
        assert ckpt_a["files"][name] == ckpt_b["files"][name], name
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 48
    top1 = [json.loads((run / "metrics.json").read_text())["top1"] for run in (full, other)]
    assert top1[0] == top1[1]


def test_sigkill_ctrl_c_or_sigterm_mid_epoch_then_resume_is_identical(tmp_path):
    full, killed, stopped, preempted = tmp_path / "full", tmp_path / "killed", tmp_path / "ctrl_c", tmp_path / "term"
    victim = _train(*ARGS, "--out", str(killed))
    polite = _train(*ARGS, "--out", str(stopped))
    _signal_after_first_checkpoint([(victim, killed, signal.SIGKILL), (polite, stopped, signal.SIGINT)])
    term = _train(*ARGS, "--out", str(preempted), "--auto-resume")  # two training processes at a time
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / "checkpoint" / "latest.json").read_text())["epoch"] < 3
    out = polite.stdout.read()
    assert polite.returncode == 130 and f"--resume {stopped}" in out, out
    manifest = json.loads((stopped / "checkpoint" / "latest.json").read_text())
    assert not manifest["dir"].endswith("_b000000"), manifest  # saved mid-epoch, at a step boundary
    _signal_after_first_checkpoint([(term, preempted, signal.SIGTERM)])  # cluster preemption
    out = term.stdout.read()
    assert term.returncode == 75 and "preempted at epoch " in out and f"--resume {preempted}" in out, out
    assert not json.loads((preempted / "checkpoint" / "latest.json").read_text())["dir"].endswith("_b000000")
    assert main(["train", *ARGS, "--out", str(full)]) == 0
    for run_dir in (killed, stopped):
        assert main(["train", "--resume", str(run_dir)]) == 0
        _assert_same_run(full, run_dir)
    assert main(["train", *ARGS, "--out", str(preempted), "--auto-resume"]) == 0  # the same command continues it
    _assert_same_run(full, preempted)
