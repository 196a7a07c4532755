"""Crash safety: SIGKILL a tiny `vitkit train` at random moments, resume, compare with an uninterrupted run.

One uninterrupted reference run, then ``--tries`` runs that each get ``kill -9`` at a moment
drawn uniformly over the reference run's training phase: from when its ``config.json`` appears
(imports and start-up done) to the end of the run (so kills land during epochs, checkpoint
writes and the final save, and a few during start-up of a resumed run; a run that ends before
its drawn moment is not counted and is drawn again). A killed run is continued with
``--resume`` when it has a checkpoint, else started again on the same ``--out``; a run may
be killed again (``--kills`` per try). A try survives when its final ``model.safetensors``
is byte-identical to the reference's and ``vitkit eval`` agrees on top-1.

    python3 benchmarks/kill_resume.py --tries 12 --out /tmp/kill_resume

Writes ``kill_resume.json`` (every kill moment, whether a checkpoint existed, the outcome).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ARGS = ["--model", "vit_test", "--set", "model.img_size=8", "model.patch_size=2", "data.limit_train=256",
        "data.limit_val=32", "batch_size=16", "epochs=5", "tensorboard=false", "progress=false", "threads=1",
        "schedule.warmup_steps=3", "optim.lr=3e-3", "ema.enabled=true", "ema.decay=0.9"]


def _start(out: Path, resume: bool) -> subprocess.Popen:
    argv = ["--resume", str(out)] if resume else [*ARGS, "--out", str(out)]
    return subprocess.Popen([sys.executable, "-m", "vitkit.cli", "train", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _top1(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["top1"]


def _continue(out: Path) -> subprocess.Popen:
    return _start(out, resume=(out / "checkpoint" / "latest.json").is_file())


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Poll until ``path`` exists or ``proc`` has exited."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.01)


def one_try(out: Path, window: tuple[float, float], kills: int, rng: random.Random) -> dict:
    """Kill up to ``kills`` times, each at a moment uniform in ``window`` (seconds after the
    (re)start), then let the run finish."""
    events = []
    proc = _start(out, resume=False)
    for _ in range(kills):
        moment = rng.uniform(*window)
        try:
            proc.wait(timeout=moment)
            break  # finished before the kill
        except subprocess.TimeoutExpired:
            had_ckpt = (out / "checkpoint" / "latest.json").is_file()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            events.append({"after_s": round(moment, 2), "checkpoint_existed": had_ckpt})
            proc = _continue(out)
    text, _ = proc.communicate(timeout=1800)
    return {"kills": events, "returncode": proc.returncode, "tail": text.strip().splitlines()[-1:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=12)
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs per try at most (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/vitkit_kill_resume")
    args = p.parse_args()
    root, rng = Path(args.out), random.Random(args.seed)
    root.mkdir(parents=True, exist_ok=True)
    ref = root / "reference"
    t0 = time.monotonic()
    proc = _start(ref, resume=False)
    _wait_for(ref / "config.json", proc)
    started = time.monotonic() - t0
    text, _ = proc.communicate(timeout=1800)
    duration = time.monotonic() - t0
    assert proc.returncode == 0, text
    ref_sha, ref_top1 = _sha(ref / "model" / "model.safetensors"), _top1(ref)
    tries, attempt = [], 0
    while len(tries) < args.tries and attempt < 3 * args.tries:
        out, attempt = root / f"try_{attempt:03d}", attempt + 1
        result = one_try(out, (started, duration), args.kills, rng)
        if not result["kills"]:  # it finished before the drawn moment: not a try, draw again
            continue
        i = len(tries)
        result["identical"] = (result["returncode"] == 0 and _sha(out / "model" / "model.safetensors") == ref_sha
                               and _top1(out) == ref_top1)
        tries.append(result)
        print(f"try {i + 1}/{args.tries}: {len(result['kills'])} kill(s) "
              f"{[k['after_s'] for k in result['kills']]} -> {'identical' if result['identical'] else 'DIFFERENT'}",
              flush=True)
    kills = [k for t in tries for k in t["kills"]]
    summary = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": _cpu(),
               "command": " ".join([sys.executable, *sys.argv]), "reference_wall_s": round(duration, 1),
               "reference_startup_s": round(started, 1),
               "tries": len(tries), "identical": sum(t["identical"] for t in tries), "kills": len(kills),
               "kills_after_a_checkpoint": sum(k["checkpoint_existed"] for k in kills), "runs": tries}
    (root / "kill_resume.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary['identical']}/{summary['tries']} tries byte-identical after {summary['kills']} SIGKILLs "
          f"({summary['kills_after_a_checkpoint']} with a checkpoint on disk)")
    return 0 if summary["identical"] == summary["tries"] else 1


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
