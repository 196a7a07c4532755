"""Run logs: a CSV row per epoch and TensorBoard scalars (rank 0 only)."""
from __future__ import annotations

import csv
from pathlib import Path

LOG_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_metric", "img_per_s", "seconds")


class RunLogger:
    """Appends to ``RUN_DIR/log.csv`` and writes ``RUN_DIR/tb/`` events."""

    def __init__(self, run_dir, tensorboard: bool = True, enabled: bool = True):
        self.path = Path(run_dir) / "log.csv"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def read_history(self, upto_epoch: int) -> list[dict]:
        """Rows already logged (on resume: only epochs before ``upto_epoch``)."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as fh:
            rows = [_typed(r) for r in csv.DictReader(fh)]
        return [r for r in rows if r["epoch"] <= upto_epoch]

    def rewrite(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)

    def log_epoch(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        self.rewrite(history)
        row = history[-1]
        if self.writer is not None:
            for key in LOG_COLUMNS[2:]:
                if row.get(key) is not None:
                    self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _typed(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if value in ("", None):
            out[key] = None
        elif key in ("epoch", "step"):
            out[key] = int(value)
        else:
            out[key] = float(value)
    return out
