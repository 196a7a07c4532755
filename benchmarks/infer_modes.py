"""Top-1 and speed of each inference mode (fp32, bf16, dynamic int8, static int8 with fp32 or bf16
between its int8 layers; eager / compiled).

    python benchmarks/infer_modes.py RUN_DIR                         # a Fashion-MNIST run of `vitkit train`
    python benchmarks/infer_modes.py RUN_DIR --modes fp32 int8 int8-static --compile off
    python benchmarks/infer_modes.py RUN_DIR --speed-model vit_small_patch16_224 --batch-size 32
    python benchmarks/infer_modes.py RUN_DIR --quick --data-dir D    # smoke run

1. Accuracy: the run's model evaluates its test set in each mode; each row reports top-1, its
   difference from fp32 eager, and images/s over the test set (full batches after the first, which
   pays for compiling). Static int8 is calibrated on ``--calib`` training images (seeded choice);
   uncompiled, it is the fp32 reference of the int8 arithmetic (quantize / dequantize ops);
   int8-static-bf16 (bf16 between the int8 layers) has a compiled row only.
2. Speed (``--speed-model``): images/s of each vitkit mode against timm's equivalent model, fp32 eager
   and its fastest mode (compiled fp32, dynamic int8, static int8 through the same quantizer), all
   interleaved in rounds in one process on one random batch, as ratios.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from vitkit import create_model
from vitkit.data import build_data
from vitkit.engine.evaluate import eval_loader
from vitkit.engine.run_config import load_run_config
from vitkit.tools.bench import (
    STATIC,
    BenchConfig,
    input_batch,
    interleaved_times,
    make_runner,
    quantize_linear_int8,
    timm_equivalent,
)
from vitkit.tools.quantize import compile_frozen, quantize_static_int8

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("fp32", "bf16", "int8", "int8-static", "int8-static-bf16")
COMPILES = {"both": (False, True), "off": (False,), "on": (True,)}


def build_mode(model: torch.nn.Module, mode: str, compiled: bool, calib: list[torch.Tensor],
               compile_mode: str = "default"):
    """(runnable, input dtype) of a copy of ``model`` in ``mode``."""
    m = copy.deepcopy(model).eval()
    if mode in STATIC:
        mixed = mode == "int8-static-bf16"
        return quantize_static_int8(m, calib, compile=compiled, mode=compile_mode, mixed_bf16=mixed), torch.float32
    if mode == "bf16":
        m = m.to(torch.bfloat16)
    if mode == "int8":
        m = quantize_linear_int8(m)
    return (compile_frozen(m, compile_mode) if compiled else m), (torch.bfloat16 if mode == "bf16" else torch.float32)


@torch.inference_mode()
def evaluate_mode(runnable, dtype: torch.dtype, loader) -> tuple[float, float | None]:
    """(top-1, images/s over the full batches after the first)."""
    correct = total = timed = 0
    seconds, full = 0.0, None
    for i, (x, y) in enumerate(loader):
        t0 = time.perf_counter()
        pred = runnable(x.to(dtype)).argmax(1)  # (B,)
        full = full or len(y)
        if i > 0 and len(y) == full:  # a smaller last batch may compile again
            seconds, timed = seconds + time.perf_counter() - t0, timed + len(y)
        correct, total = correct + int((pred == y).sum()), total + len(y)
    return correct / total, (timed / seconds if timed else None)


def load_run(run_dir: str, args):
    """(model, test loader, calibration batches) of a training run dir."""
    model = create_model(run_dir).eval()
    data = dataclasses.replace(load_run_config(run_dir).data, augment="none", mixup_alpha=0.0, cutmix_alpha=0.0,
                               img_size=model.config.img_size[0])
    if args.data_dir:
        data = dataclasses.replace(data, data_dir=args.data_dir)
    if args.limit_test:
        data = dataclasses.replace(data, limit_val=args.limit_test)
    bundle = build_data(data, model.preprocess)
    pick = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))[:args.calib].tolist()
    images = torch.stack([bundle.train[i][0] for i in pick])  # (calib, C, H, W)
    return model, eval_loader(bundle.val, args.eval_batch_size), list(images.split(64))


def accuracy_compiles(mode: str, compile: str) -> tuple[bool, ...]:
    """Eager and / or compiled rows of ``mode``: int8-static-bf16 exists compiled only (its eager
    reference is the int8-static graph)."""
    if mode == "int8-static-bf16":
        return () if compile == "off" else (True,)
    return COMPILES[compile]


def accuracy_rows(args) -> list[dict]:
    model, loader, calib = load_run(args.run_dir, args)
    rows = []
    for mode in args.modes:
        for compiled in accuracy_compiles(mode, args.compile):
            torch._dynamo.reset()
            runnable, dtype = build_mode(model, mode, compiled, calib, args.compile_mode)
            top1, speed = evaluate_mode(runnable, dtype, loader)
            rows.append({"mode": mode, "compile": compiled, "top1": top1, "imgs_per_s": speed})
            print(f"  {mode:<12} compile={compiled!s:<5} top-1 {top1:.4f}  img/s {speed or 0:.1f}", flush=True)
    ref = next((r["top1"] for r in rows if r["mode"] == "fp32" and not r["compile"]), None)
    for r in rows:
        r["delta_vs_fp32"] = None if ref is None else r["top1"] - ref
    return rows


def speed_plan(args) -> list[tuple[str, str, BenchConfig]]:
    """(label, "vitkit" | "timm", config) rows: every vitkit mode; timm fp32 eager and its fast modes."""
    base = dict(batch_size=args.batch_size, iters=1, warmup=1, memory=False)
    modes = {True: dict(compile_mode=args.compile_mode), False: {}}  # compiled rows: the chosen torch.compile mode
    plan = []
    compiles = COMPILES[args.compile]
    for mode in args.modes:
        for compiled in ((True,) if mode in STATIC else compiles):  # static int8 always compiles
            if mode in STATIC and args.compile == "off":
                continue
            plan.append((f"vitkit {mode}{' compile' if compiled else ''}", "vitkit",
                         BenchConfig(args.speed_model, dtype=mode, compile=compiled, **base, **modes[compiled])))
    timm = [("fp32", False)] + [("fp32", True)] * (True in compiles) + [("int8", False)] * ("int8" in args.modes)
    timm += [(mode, True) for mode in STATIC if mode in args.modes and args.compile != "off"]
    for mode, compiled in timm:
        plan.append((f"timm {mode}{' compile' if compiled else ''}", "timm",
                     BenchConfig(args.speed_model, dtype=mode, compile=compiled, **base, **modes[compiled])))
    return plan


def speed_rows(args) -> list[dict]:
    """Images/s of each row of :func:`speed_plan`, interleaved; ratios vs timm fp32 eager and timm's fastest."""
    torch.manual_seed(0)
    base = create_model(args.speed_model)
    plan = speed_plan(args)
    x = input_batch(base, plan[0][2])
    runners = []
    for label, lib, cfg in plan:
        torch.manual_seed(0)
        model = create_model(args.speed_model) if lib == "vitkit" else timm_equivalent(base)
        runners.append(make_runner(label, model, x, cfg, 1.0)[0])
    times = interleaved_times(runners, args.rounds, 1, 1)
    rows = [{"label": label, "lib": lib, "imgs_per_s": args.batch_size / statistics.median(t), "times": t}
            for (label, lib, _), t in zip(plan, times, strict=True)]
    ref = rows[[r["label"] for r in rows].index("timm fp32")]["imgs_per_s"]
    fastest = max((r for r in rows if r["lib"] == "timm"), key=lambda r: r["imgs_per_s"])
    for r in rows:
        r["vs_timm_fp32"], r["vs_timm_fastest"] = r["imgs_per_s"] / ref, r["imgs_per_s"] / fastest["imgs_per_s"]
        r["timm_fastest"] = fastest["label"]
    return rows


def tables(acc: list[dict], speed: list[dict]) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    parts = [common.md_table(["mode", "compile", "top-1", "delta vs fp32 eager", "img/s"],
                             [[r["mode"], r["compile"], fmt(r["top1"], ".4f"), fmt(r["delta_vs_fp32"], "+.4f"),
                               fmt(r["imgs_per_s"], ".1f")] for r in acc])] if acc else []
    if speed:
        parts.append(common.md_table(
            ["config", "img/s (median)", "vs timm fp32 eager", f"vs timm fastest ({speed[0]['timm_fastest']})"],
            [[r["label"], f"{r['imgs_per_s']:.1f}", f"{r['vs_timm_fp32']:.2f}x", f"{r['vs_timm_fastest']:.2f}x"]
             for r in speed]))
    return "\n\n".join(parts)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=None, help="a Fashion-MNIST `vitkit train` run dir")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the run's)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--compile", choices=tuple(COMPILES), default="both", help="eager, compiled or both")
    ap.add_argument("--compile-mode", choices=("default", "max-autotune"), default="default",
                    help="torch.compile mode of every compiled row, vitkit's and timm's alike")
    ap.add_argument("--calib", type=int, default=512, help="training images that calibrate static int8")
    ap.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test images")
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--speed-model", default=None, help="also time every mode on this model vs timm")
    ap.add_argument("--batch-size", type=int, default=32, help="batch of the speed part")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the speed part")
    ap.add_argument("--quick", action="store_true", help="smoke run: 256 test images, 64 calibration images, 2 rounds")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.run_dir is None and args.speed_model is None:
        ap.error("give a RUN_DIR, a --speed-model or both")
    if args.quick:
        args.limit_test, args.calib, args.rounds = args.limit_test or 256, min(args.calib, 64), 2
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    acc = accuracy_rows(args) if args.run_dir else []
    speed = speed_rows(args) if args.speed_model else []
    raw = {"run_dir": args.run_dir, "speed_model": args.speed_model, "batch_size": args.batch_size,
           "compile_mode": args.compile_mode,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "accuracy": acc, "speed": speed}
    common.write_results(Path(args.out), "infer_modes", "Inference modes: top-1 and images/s", tables(acc, speed), raw)
    return raw


if __name__ == "__main__":
    main()
