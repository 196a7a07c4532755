"""Regenerate the README speed table: vitkit vs timm (same config), interleaved, same process.

    python benchmarks/bench_vs_timm.py [--quick] [--json OUT.json]

For each model (vit_small_patch16_224 at 224 px, vit_small_patch4_32 at 32 px), batch 32:
inference fp32 eager (vitkit vs timm), vitkit bf16, torch.compile and dynamic int8 (vs timm fp32
eager; timm int8 too),
training fp32 and bf16-autocast (vitkit vs timm), and training peak memory with gradient
checkpointing. Every row of a group runs interleaved in rounds, so machine load hits all alike.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import torch

from vitkit import create_model
from vitkit.tools.bench import (
    DTYPES,
    BenchConfig,
    input_batch,
    interleaved_times,
    make_runner,
    matmul_peak,
    timm_equivalent,
)

MODELS = ("vit_small_patch16_224", "vit_small_patch4_32")


def run_group(name: str, rows: list[tuple[str, str, BenchConfig]], peaks: dict) -> list[dict]:
    """rows: (label, "vitkit"|"timm", cfg); all run interleaved on the same input batch."""
    torch.manual_seed(0)
    base = create_model(name)
    x = input_batch(base, rows[0][2])
    runners = []
    for label, lib, cfg in rows:
        model = create_model(name) if lib == "vitkit" else timm_equivalent(base)
        runners.append((label, cfg, *make_runner(label, model, x, cfg, peaks[cfg.dtype])))

    def remeasure_peaks():  # before each round: the peak is re-measured under the same load
        for dtype in {cfg.dtype for _, _, cfg in rows}:
            peaks[dtype] = max(peaks[dtype], matmul_peak(DTYPES[dtype]))
    first = rows[0][2]
    times = interleaved_times([step for _, _, step, _ in runners], first.rounds, first.iters, first.warmup,
                              remeasure_peaks)
    out = []
    for (label, cfg, _, finish), t in zip(runners, times, strict=True):
        r = finish(t)._asdict()
        r["peak_fraction"] = r["achieved_flops"] / peaks[cfg.dtype]  # vs the best peak seen so far
        out.append(dict(r, model=name, label=label, mode="train" if cfg.train else "infer", dtype=cfg.dtype,
                        compile=cfg.compile, grad_ckpt=cfg.grad_checkpointing, times=t))
        print(f"  {name:<24} {label:<28} {r['imgs_per_s']:8.1f} img/s  {r['step_s'] * 1e3:9.1f} ms  "
              f"{(r['peak_mem_bytes'] or 0) / 2**20:8.1f} MiB  {r['peak_fraction']:6.1%} of peak", flush=True)
    return out


def groups(quick: bool, rounds: int):
    it = dict(batch_size=32, iters=1, rounds=2 if quick else rounds, warmup=1)
    c = lambda **kw: BenchConfig("", **dict(it, **kw))  # noqa: E731
    yield "inference", [("timm fp32 eager", "timm", c(memory=False)),
                        ("vitkit fp32 eager", "vitkit", c(memory=False)),
                        ("vitkit bf16 eager", "vitkit", c(dtype="bf16", memory=False)),
                        ("vitkit fp32 compile", "vitkit", c(compile=True, memory=False)),
                        ("vitkit int8 eager (dynamic quant.)", "vitkit", c(dtype="int8", memory=False)),
                        ("timm int8 eager (dynamic quant.)", "timm", c(dtype="int8", memory=False))]
    yield "training fp32", [("timm fp32 train", "timm", c(train=True)),
                            ("vitkit fp32 train", "vitkit", c(train=True)),
                            ("vitkit fp32 train + grad ckpt", "vitkit", c(train=True, grad_checkpointing=True)),
                            ("vitkit fp32 train compile", "vitkit", c(train=True, compile=True, memory=False))]
    yield "training bf16", [("timm bf16-autocast train", "timm", c(train=True, dtype="bf16", memory=False)),
                            ("vitkit bf16-autocast train", "vitkit", c(train=True, dtype="bf16", memory=False))]


def to_markdown(results: list[dict]) -> str:
    """The README table: one row per measurement, the ratio against timm of the same group."""
    lines = ["| model | step | config | img/s (median) | step s (median / min) | peak MiB | % of matmul peak "
             "| vs timm (median / min) |", "|---|---|---|---|---|---|---|---|"]
    ref = {(r["model"], r["mode"], r["dtype"]): r for r in results if r["label"].startswith("timm")}
    for r in results:
        base = ref.get((r["model"], r["mode"], r["dtype"] if r["mode"] == "train" else "fp32"))
        mem = f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] else "-"
        ratio = (f"{base['step_s'] / r['step_s']:.2f}x / {min(base['times']) / min(r['times']):.2f}x"
                 if base else "-")
        lines.append(f"| {r['model']} | {r['mode']} | {r['label']} | {r['imgs_per_s']:.2f} "
                     f"| {r['step_s']:.2f} / {min(r['times']):.2f} | {mem} | {r['peak_fraction']:.0%} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one step per row each)")
    ap.add_argument("--groups", nargs="+", default=None, help="only these groups (inference, 'training fp32', ...)")
    ap.add_argument("--from-json", default=None, help="only print the markdown table of a saved run")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            print(to_markdown(json.load(fh)["results"]))
        return
    peaks = {name: matmul_peak(dtype) for name, dtype in DTYPES.items()}
    meta = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(), "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()}}
    print(json.dumps(meta), flush=True)
    results = []
    for name in args.models:
        for group, rows in groups(args.quick, args.rounds):
            if args.groups and group not in args.groups:
                continue
            print(f"[{group}]", flush=True)
            results += run_group(name, rows, peaks)
    meta["loadavg_end"] = os.getloadavg()
    meta["matmul_peak_gflops_best"] = {k: v / 1e9 for k, v in peaks.items()}
    print(json.dumps({"loadavg_end": meta["loadavg_end"], "matmul_peak_gflops_best": meta["matmul_peak_gflops_best"]}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2, default=str)
    print(to_markdown(results))


if __name__ == "__main__":
    main()
