"""Where the time goes: the top operators by self CPU time of a model in each mode, as markdown.

    python benchmarks/profile_modes.py --model vit_small_patch16_224 --batch-size 32
    python benchmarks/profile_modes.py --model vit_test --modes fp32 int8 --steps train infer --quick

For each mode (fp32, bf16, dynamic int8, static int8, static int8 with bf16 between its int8 layers)
and step (inference; a training step: forward, cross-entropy, backward, SGD update, fp32 or bf16
autocast), the step runs ``--warmup`` times untimed (static int8 compiles there), then ``--iters``
times under ``torch.profiler``; the table lists the ``--top`` operators by self CPU time (time inside
the operator itself, not its callees) with their share of the profiled total and their call count.
int8 modes are inference only.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from vitkit import create_model
from vitkit.tools.bench import BenchConfig, input_batch, make_step, prepare

MODES = ("fp32", "bf16", "int8", "int8-static", "int8-static-bf16")
STEPS = ("infer", "train")


def profile_step(model_name: str, mode: str, train: bool, args) -> list[tuple[str, float, int]]:
    """[(operator, self CPU seconds per step, calls per step)] of one mode / step, most expensive first."""
    torch.manual_seed(0)
    cfg = BenchConfig(model_name, batch_size=args.batch_size, dtype=mode, train=train, memory=False)
    cfg.validate()
    model = create_model(model_name)
    runnable, x, _ = prepare(model, input_batch(model, cfg), cfg)
    step = make_step(runnable, x, cfg)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.iters):
            step()
    rows = [(e.key, e.self_cpu_time_total / 1e6 / args.iters, e.count // args.iters) for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[1])


def to_markdown(title: str, rows: list[tuple[str, float, int]], top: int) -> str:
    total = sum(r[1] for r in rows) or 1.0
    lines = [f"#### {title}", "", "| operator | self CPU ms / step | share | calls / step |", "|---|---|---|---|"]
    for name, seconds, calls in rows[:top]:
        lines.append(f"| `{name}` | {seconds * 1e3:.2f} | {seconds / total:.1%} | {calls} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--top", type=int, default=10, help="operators per table")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 2, one warm-up and one profiled step")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_size, args.iters, args.warmup = 2, 1, 1
    results = {}
    for step in args.steps:
        for mode in args.modes:
            if step == "train" and mode.startswith("int8"):
                continue  # quantized models are inference only
            rows = profile_step(args.model, mode, step == "train", args)
            results[f"{mode} {step}"] = rows
            print(to_markdown(f"{args.model}, {mode}, {step}, batch {args.batch_size}", rows, args.top) + "\n",
                  flush=True)
    return results


if __name__ == "__main__":
    main()
