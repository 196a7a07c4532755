"""Shared helpers of the result benchmarks: run a recipe, time it, write markdown + JSON tables.

Every benchmark trains through :func:`vitkit.engine.trainer.train` (the same path as
``vitkit train``), so a figure in docs/results.md is what a user gets from the recipe.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import torch

from vitkit.engine.recipes import get_recipe
from vitkit.engine.run_config import RunConfig, resolve


def base_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every benchmark script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny budget (a few hundred images, 1 epoch): a smoke test")
    p.add_argument("--seeds", type=int, default=1, help="seeds per configuration (mean and spread)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch budget")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra run-config overrides (as vitkit train)")
    p.add_argument("--out", default=out, help="folder for the table (.md), raw numbers (.json) and run dirs")
    return p


def command_line() -> str:
    """The command that regenerates the current figures."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def machine() -> str:
    """One line describing the machine (CPU model, cores, torch)."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


class LoadMonitor:
    """Samples the 1-minute load average every few seconds in a daemon thread (mean and max)."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


def make_config(recipe: str, overrides: dict, out_dir: Path, vt: dict | None = None, extra=()) -> RunConfig:
    """``recipe`` + typed ``--set``-style overrides (then ``extra`` KEY=VALUE strings); ``vt`` = VTConfig fields."""
    from vitkit.config import parse_set_args

    sets = {"progress": "false", "out_dir": str(out_dir), **{k: str(v) for k, v in overrides.items()},
            **parse_set_args(extra)}
    cfg = resolve(get_recipe(recipe), sets)
    return resolve(cfg, {f"model.vt.{k}": v for k, v in vt.items()}) if vt else cfg


def epoch_wall_times(run_dir: Path) -> list[float]:
    """Wall-clock time stamp of each epoch's log row (TensorBoard event ``val_metric`` / ``train_loss``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tag = "train_loss" if "train_loss" in acc.Tags().get("scalars", []) else None
    return [e.wall_time for e in acc.Scalars(tag)] if tag else []


def run_training(cfg: RunConfig) -> dict:
    """Train ``cfg`` (fresh run dir) and return metrics, history, wall time and load."""
    from vitkit.engine.trainer import train

    run_dir = Path(cfg.out_dir)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    t0 = time.time()
    with LoadMonitor() as load:
        metrics = train(cfg)
    wall = time.time() - t0
    history = _read_log(run_dir / "log.csv")
    stamps = epoch_wall_times(run_dir) if cfg.tensorboard else []
    for row, stamp in zip(history, stamps, strict=False):
        row["wall_s"] = stamp - t0
    img_s = [r["img_per_s"] for r in history]
    return {"metrics": {k: v for k, v in metrics.items() if k not in ("confusion", "per_class_iou_raw")},
            "history": history, "wall_s": wall, "load_mean": load.mean, "load_max": max(load.samples),
            "train_img_per_s": sum(img_s) / len(img_s) if img_s else None, "run_dir": str(run_dir)}


def _read_log(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def fmt_pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std (n=k)`` of ``values * scale``."""
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={len(values)})"


def md_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (every row has len(headers) cells)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, expected {len(headers)}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def write_results(out: Path, name: str, title: str, table: str, raw: dict, notes: str = "",
                  command: str | None = None) -> Path:
    """Print and write ``OUT/NAME.md`` (title, table, command, date, machine, load) and ``OUT/NAME.json``."""
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"command": command or command_line(), "date": now, "machine": machine(), "load_now": os.getloadavg()[0]}
    text = (f"### {title}\n\n{table}\n\nCommand: `{meta['command']}`  \nDate: {now}  \n"
            f"Machine: {meta['machine']}\n" + (f"\n{notes}\n" if notes else ""))
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({**meta, **raw}, indent=2, default=str))
    print(text, flush=True)
    return out / f"{name}.md"


def budget_overrides(args) -> dict:
    """The run-size flags every script shares (--data-dir, --epochs, --threads, --limit-*) as --set keys."""
    sets = {"data.data_dir": args.data_dir} if args.data_dir else {}
    for key, value in (("epochs", args.epochs), ("threads", args.threads), ("data.limit_train", args.limit_train),
                       ("data.limit_val", args.limit_val)):
        if value is not None:
            sets[key] = value
    return sets


def quick_overrides(limit_train: int = 256, limit_val: int = 128) -> dict:
    """The ``--quick`` budget: a few hundred images, one epoch, no TensorBoard plots cost beyond one file."""
    return {"epochs": 1, "data.limit_train": limit_train, "data.limit_val": limit_val, "eval_batch_size": 128}


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def train_speed(models: dict, batch: int, img_size: int, in_chans: int, rounds: int = 3, steps: int = 2,
                threads: int = 1) -> dict:
    """Training images/s of each model, measured interleaved (A, B, A, B, ...) on random data: median of rounds.

    Interleaving spreads the load of a shared machine evenly over the models compared.
    """
    import statistics

    torch.set_num_threads(threads)
    x = torch.randn(batch, in_chans, img_size, img_size)
    y = torch.randint(0, 2, (batch,))
    state = {}
    for name, model in models.items():
        model.train()
        state[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), [])
    for r in range(rounds + 1):  # round 0 warms up
        for model, opt, times in state.values():
            t = time.perf_counter()
            for _ in range(steps):
                out = model(x)
                loss = out.float().mean() if out.ndim > 2 else torch.nn.functional.cross_entropy(out, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if r:
                times.append(batch * steps / (time.perf_counter() - t))
    return {name: statistics.median(times) for name, (_, _, times) in state.items()}
