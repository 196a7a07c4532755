"""Training wall-clock time, the quantity a time budget (``schedule.time_budget_s``) spends."""
from __future__ import annotations

import time

from vitkit.engine.distributed import DistInfo, max_over_ranks


def now() -> float:
    """The clock the training time is read from (seconds; monotonic)."""
    return time.perf_counter()


class TrainClock:
    """Seconds spent training: optimizer steps and the data loading between them, in this process
    and, after ``--resume``, in the runs before it (``elapsed`` is saved with every checkpoint).
    Start-up, evaluation and checkpointing do not count. With a budget, every process holds the
    largest value of all processes after each step, so all agree on the learning rate and on the
    step at which the budget is spent."""

    def __init__(self, budget_s: float | None = None, elapsed: float = 0.0):
        self.budget_s, self.elapsed = budget_s, elapsed
        self._since = now()

    def start(self) -> None:
        """Count from now (the start of an epoch's training)."""
        self._since = now()

    def tick(self, info: DistInfo) -> None:
        """Add the time since the last tick (or start); agreed over processes when there is a budget."""
        t = now()
        self.elapsed += t - self._since
        self._since = t
        if self.budget_s is not None:
            self.elapsed = max_over_ranks(self.elapsed, info)

    @property
    def progress(self) -> float:
        """The spent fraction of the budget, in [0, 1] (0 without a budget)."""
        return 0.0 if self.budget_s is None else min(1.0, self.elapsed / self.budget_s)

    @property
    def spent(self) -> bool:
        return self.budget_s is not None and self.elapsed >= self.budget_s
