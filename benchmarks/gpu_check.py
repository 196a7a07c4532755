"""The GPU check: everything vitkit claims about CUDA, run once on a CUDA machine, in one table.

    python benchmarks/gpu_check.py [--out benchmarks/results] [--fmnist-dir DIR] [--parts tests fmnist ...]

Parts, in order (each has a time limit; the whole check fits in 8 minutes on one GPU):
1. ``tests``: the device-parametrised engine tests on cuda (``pytest -k cuda``, plus the
   device-name and determinism tests).
2. ``fmnist``: the fast Fashion-MNIST recipe (``fmnist_vit_fast``) in bf16: started, preempted
   with SIGTERM after its first checkpoint (exit code 75), continued by the same command
   (``--auto-resume``); top-1, img/s and wall time.
3. ``torchrun``: with 2 or more GPUs, ``torchrun --nproc_per_node 2`` trainings on NCCL, DDP and
   FSDP; skipped, and said so, on one GPU.
4. ``bench``: ``vitkit bench --compare timm`` at batch 256 for vit_small / vit_base
   (patch 16, 224 px): fp32, bf16, and ``torch.compile`` (fp32).

Writes OUT/gpu_check.md (one markdown table) and OUT/gpu_check.json. Exit code 0 when every part
that ran passed, 1 otherwise, 2 without a CUDA device (nothing is run).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import md_table, write_results  # noqa: E402

PARTS = ("tests", "fmnist", "torchrun", "bench")
BENCH_MODELS = ("vit_small_patch16_224", "vit_base_patch16_224")
BENCH_MODES = (("fp32", ["--dtype", "fp32"]), ("bf16", ["--dtype", "bf16"]),
               ("compile", ["--dtype", "fp32", "--compile"]))
TEST_FILES = ("tests/test_device.py", "tests/test_engine.py")
HEADERS = ["part", "setting", "result", "seconds"]
DEFAULT_FMNIST = "/usr/share/datasets/fashion-mnist"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for gpu_check.md / .json")
    p.add_argument("--work", default=None, help="folder for the run dirs (default: OUT/gpu_check_runs)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run (default: all)")
    p.add_argument("--fmnist-dir", default=os.environ.get("VITKIT_FMNIST", DEFAULT_FMNIST),
                   help=f"Fashion-MNIST folder (default: $VITKIT_FMNIST or {DEFAULT_FMNIST})")
    p.add_argument("--batch-size", type=int, default=256, help="bench batch size (default: 256)")
    p.add_argument("--iters", type=int, default=20, help="bench timed steps per model (default: 20)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default: 480)")
    return p.parse_args(argv)


def row(part: str, setting: str, result: str, seconds: float | None, ok: bool | None) -> dict:
    """One table row; ``ok`` None = skipped (not a failure)."""
    return {"part": part, "setting": setting, "result": result,
            "seconds": None if seconds is None else round(seconds, 1), "ok": ok}


def table(rows: list[dict]) -> str:
    """The one markdown table of the check."""
    return md_table(HEADERS, [[r["part"], r["setting"], r["result"], "-" if r["seconds"] is None else r["seconds"]]
                              for r in rows])


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, output, seconds); 124 when the time limit cut it."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=max(1.0, timeout))
        return proc.returncode, proc.stdout, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out + f"\n(time limit {timeout:.0f} s)", time.perf_counter() - t0


def vitkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitkit.cli", *args]


def pytest_summary(output: str) -> str:
    """The counts of pytest's last summary line, e.g. '12 passed, 1 failed'."""
    found = re.findall(r"(\d+) (passed|failed|error|errors|skipped|deselected)", output.splitlines()[-1] if output
                       else "")
    return ", ".join(f"{n} {what}" for n, what in found if what != "deselected") or "no summary"


def part_tests(args, deadline: float) -> list[dict]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TEST_FILES,
           "-k", "cuda or resolve_device or determinism"]
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # before the first cuBLAS call: the deterministic tests need it
    code, out, secs = run(cmd, min(240.0, deadline - time.monotonic()), env)
    return [row("tests", "engine tests on cuda (pytest -k cuda)", pytest_summary(out), secs, code == 0)]


def _metrics(run_dir: Path) -> tuple[float | None, float | None]:
    """(top-1, mean training img/s over the epochs) of a finished run dir; (None, None) if unfinished."""
    try:
        top1 = json.loads((run_dir / "metrics.json").read_text())["top1"]
        with (run_dir / "log.csv").open(newline="") as fh:
            speeds = [float(r["img_per_s"]) for r in csv.DictReader(fh)]
        return top1, sum(speeds) / max(1, len(speeds))
    except (OSError, KeyError, ValueError, TypeError):
        return None, None


def _fresh(run_dir: Path) -> Path:
    """An empty run dir (a previous check's run would be continued, not trained)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def _preempt_after_checkpoint(cmd: list[str], run_dir: Path, timeout: float) -> tuple[int, float]:
    """Start ``cmd``, SIGTERM it once its first checkpoint exists; (exit code, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoint" / "latest.json"
    while not latest.exists() and proc.poll() is None and time.perf_counter() - t0 < timeout:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60), time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        return 124, time.perf_counter() - t0


def part_fmnist(args, deadline: float) -> list[dict]:
    setting = "fmnist_vit_fast, bf16, SIGTERM after epoch 1, --auto-resume"
    if not Path(args.fmnist_dir).is_dir():
        return [row("fmnist", setting, f"skipped: no Fashion-MNIST at {args.fmnist_dir} (pass --fmnist-dir)", None,
                    None)]
    run_dir = _fresh(Path(args.work) / "fmnist_bf16")
    cmd = vitkit("train", "--recipe", "fmnist_vit_fast", "--device", "cuda", "--out", str(run_dir), "--auto-resume",
                 "--set", "precision=bf16", "progress=false", "tensorboard=false", f"data.data_dir={args.fmnist_dir}")
    code1, secs1 = _preempt_after_checkpoint(cmd, run_dir, min(150.0, deadline - time.monotonic()))
    code2, out, secs2 = run(cmd, min(240.0, deadline - time.monotonic()))
    top1, speed = _metrics(run_dir)
    ok = code1 == 75 and code2 == 0 and top1 is not None
    result = f"top-1 {top1:.4f}, {speed:.0f} img/s" if top1 is not None else (out.strip().splitlines() or ["-"])[-1]
    return [row("fmnist", setting, f"{result}; exit codes {code1} then {code2}", secs1 + secs2, ok)]


def part_torchrun(args, deadline: float) -> list[dict]:
    import torch

    if torch.cuda.device_count() < 2:
        return [row("torchrun", "2 GPUs, NCCL", f"skipped: {torch.cuda.device_count()} GPU on this machine", None,
                    None)]
    rows = []
    for parallel in ("ddp", "fsdp"):
        run_dir = _fresh(Path(args.work) / f"digits_{parallel}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vitkit.cli", "train", "--device", "cuda", "--out", str(run_dir), "--auto-resume",
               "--set", f"parallel={parallel}", "epochs=3", "progress=false", "tensorboard=false"]
        code, out, secs = run(cmd, min(120.0, deadline - time.monotonic()))
        top1, speed = _metrics(run_dir)
        result = f"top-1 {top1:.4f}, {speed:.0f} img/s" if top1 is not None else f"exit {code}"
        rows.append(row("torchrun", f"digits_vit, 2 GPUs, NCCL, parallel={parallel}, 3 epochs", result, secs,
                        code == 0))
    return rows


def bench_row(model: str, mode: str, batch: int, payload: dict | None, secs: float, code: int) -> dict:
    """The row of one ``vitkit bench --json`` result (None: the command failed with ``code``)."""
    setting = f"{model}, batch {batch}, {mode}, inference vs timm"
    if payload is None:
        return row("bench", setting, f"failed (exit {code})", secs, False)
    by = {r["label"]: r for r in payload["results"]}
    a, b = by["vitkit"], by.get("timm")
    result = f"vitkit {a['imgs_per_s']:.0f} img/s"
    if b is not None:
        result += f", timm {b['imgs_per_s']:.0f} img/s, ratio {a['imgs_per_s'] / b['imgs_per_s']:.2f}x"
    return row("bench", setting, result, secs, True)


def part_bench(args, deadline: float) -> list[dict]:
    rows = []
    for model in BENCH_MODELS:
        for mode, flags in BENCH_MODES:
            left = deadline - time.monotonic()
            if left < 20:
                rows.append(row("bench", f"{model}, {mode}", "not run: time budget spent", None, None))
                continue
            out_json = Path(args.work) / f"bench_{model}_{mode}.json"
            cmd = vitkit("bench", model, "--device", "cuda", "--batch-size", str(args.batch_size), "--compare", "timm",
                         "--iters", str(args.iters), "--warmup", "3", "--peak-n", "8192", "--json", str(out_json),
                         *flags)
            code, _, secs = run(cmd, min(150.0, left))
            payload = json.loads(out_json.read_text()) if code == 0 and out_json.is_file() else None
            rows.append(bench_row(model, mode, args.batch_size, payload, secs, code))
    return rows


def device_line() -> str:
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x {names[0]}, CUDA {torch.version.cuda}, torch {torch.__version__}"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); this check needs a GPU. "
              "Nothing was run.", file=sys.stderr)
        return 2
    args.work = args.work or str(Path(args.out) / "gpu_check_runs")
    deadline = time.monotonic() + args.budget
    rows: list[dict] = []
    for part in PARTS:
        if part not in args.parts:
            continue
        if time.monotonic() > deadline - 10:
            rows.append(row(part, "-", "not run: time budget spent", None, None))
            continue
        rows += {"tests": part_tests, "fmnist": part_fmnist, "torchrun": part_torchrun, "bench": part_bench}[part](
            args, deadline)
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    notes = f"Device: {device_line()}. Rows marked skipped or not run did not fail."
    write_results(Path(args.out), "gpu_check", "GPU check (benchmarks/gpu_check.py)", table(rows), {"rows": rows},
                  notes)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
