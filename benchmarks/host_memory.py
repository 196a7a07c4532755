"""What keeping freed host memory in the process does to a CPU step: page faults, system time, images/s.

    python benchmarks/host_memory.py                       # vit_small_patch16_224, batch 32, train and inference
    python benchmarks/host_memory.py --quick               # vit_test, one step each (smoke test)

Each measurement runs in a fresh process, with ``VITKIT_HOST_MEMORY=default`` (glibc's malloc as it is) or
``keep`` (``vitkit.engine.device.keep_host_memory``), in turn (default, keep, default, keep, ...) so that load
on the machine falls on both alike. A process builds the model, runs ``--warmup`` untimed steps, then times
``--iters`` steps and reads the minor page faults and the system and user CPU seconds of each from
``getrusage``. The table gives the median over all timed steps of each setting.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SETTINGS = ("default", "keep")


def child(model_name: str, step_kind: str, batch: int, warmup: int, iters: int) -> dict:
    """Per-step wall seconds, minor faults and CPU seconds of one process (run with the setting in its env)."""
    from vitkit import create_model
    from vitkit.engine.device import keep_host_memory

    kept = keep_host_memory()
    torch.manual_seed(0)
    model = create_model(model_name)
    x = torch.randn(batch, model.in_chans, *model.config.img_size)
    y = torch.randint(0, model.num_classes, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    @torch.inference_mode()
    def infer() -> None:
        model(x)

    step = train if step_kind == "train" else infer
    model.train(step_kind == "train")
    for _ in range(warmup):
        step()
    rows = []
    for _ in range(iters):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        rows.append({"wall_s": t1 - t0, "minor_faults": r1.ru_minflt - r0.ru_minflt,
                     "sys_s": r1.ru_stime - r0.ru_stime, "user_s": r1.ru_utime - r0.ru_utime})
    return {"kept": kept, "steps": rows}


def measure(args, setting: str, step_kind: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", step_kind, "--model", args.model,
           "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VITKIT_HOST_MEMORY": setting})
    if done.returncode:
        raise SystemExit(f"the {setting} / {step_kind} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(setting: str, step_kind: str, batch: int, runs: list[dict]) -> dict:
    steps = [s for r in runs for s in r["steps"]]
    med = {k: statistics.median(s[k] for s in steps) for k in ("wall_s", "minor_faults", "sys_s", "user_s")}
    return {"setting": setting, "step": step_kind, "kept": all(r["kept"] for r in runs), "steps": len(steps),
            "img_per_s": batch / med["wall_s"], **med, "runs": runs}


def main(argv=None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "benchmarks/results")
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    p.add_argument("--rounds", type=int, default=2, help="processes per setting and step, in turn")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed steps per process")
    p.add_argument("--child", choices=("train", "infer"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.child, args.batch_size, args.warmup, args.iters)))
        return []
    if args.quick:
        args.model, args.batch_size, args.rounds, args.warmup, args.iters = "vit_test", 2, 1, 1, 1
    runs = {(s, k): [] for k in args.steps for s in SETTINGS}
    with common.LoadMonitor(every=2.0) as load:
        for _ in range(args.rounds):
            for step_kind in args.steps:
                for setting in SETTINGS:
                    runs[(setting, step_kind)].append(measure(args, setting, step_kind))
    rows = [summarise(s, k, args.batch_size, r) for (s, k), r in runs.items()]
    base = {r["step"]: r["img_per_s"] for r in rows if r["setting"] == "default"}
    table = common.md_table(
        ["step", "host memory", "img/s (median step)", "vs default", "minor page faults / step", "system CPU s / step",
         "user CPU s / step"],
        [[r["step"], r["setting"] + ("" if r["kept"] or r["setting"] == "default" else " (not available: as default)"),
          f"{r['img_per_s']:.2f}", f"{r['img_per_s'] / base[r['step']]:.2f}x", f"{r['minor_faults']:,.0f}",
          f"{r['sys_s']:.2f}", f"{r['user_s']:.2f}"] for r in rows])
    notes = (f"`{args.model}`, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads, AdamW for training; "
             f"{args.rounds} processes per row, {args.iters} timed steps each; load average {load.mean:.1f}.")
    common.write_results(Path(args.out), "host_memory", "Host memory: page faults per CPU step", table,
                         {"rows": rows, "load_mean": load.mean}, notes=notes)
    return rows


if __name__ == "__main__":
    main()
