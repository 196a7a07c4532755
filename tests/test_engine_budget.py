"""A time budget (schedule.time_budget_s): the lr follows training time, the run stops when it is
spent (with everything a finished run has), and a resumed run continues the same budget.
The clock is replaced by one that advances one second per reading, so nothing sleeps."""
from __future__ import annotations

import json

import pytest
import torch

from test_engine import tiny_cfg
from vitkit.engine import clock, loop, trainer
from vitkit.engine.clock import TrainClock
from vitkit.engine.distributed import DistInfo
from vitkit.engine.logging import RunLogger
from vitkit.engine.optim import build_scheduler
from vitkit.engine.run_config import RunConfig, ScheduleConfig, resolve
from vitkit.errors import VitkitError


@pytest.fixture
def one_second_per_reading(monkeypatch):
    """The training clock advances exactly 1 s per reading: a start plus one reading per step."""
    t = {"now": 0.0}

    def fake():
        t["now"] += 1.0
        return t["now"]
    monkeypatch.setattr(clock, "now", fake)


def test_lr_follows_training_time_not_steps():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    timer = TrainClock(budget_s=10.0)
    # warm-up: 2 of 20 steps = the first tenth of the budget (1 s); cosine over the other 9 s to 0.1 * lr
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=2, min_lr_ratio=0.1, time_budget_s=10.0), 10, 2, timer)
    for elapsed, factor in [(0.5, 0.5), (1.0, 1.0), (5.5, 0.55), (10.0, 0.1), (30.0, 0.1)]:
        timer.elapsed = elapsed
        for _ in range(3):  # more steps at the same time: the same lr
            opt.step()
            sched.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor, rel=1e-12), elapsed


def test_time_budget_must_be_positive():
    with pytest.raises(VitkitError, match="schedule.time_budget_s"):
        resolve(RunConfig(model="vit_test"), {"schedule.time_budget_s": "0"})


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "checkpoint" / "latest.json").read_text())


def _state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint" / _manifest(run_dir)["dir"] / "state.pt", weights_only=True)


def test_run_stops_when_the_budget_is_spent_mid_epoch(tmp_path, one_second_per_reading):
    """6 steps an epoch, a budget of 8 s = 8 steps: the run ends in epoch 2 as a finished run does."""
    cfg = tiny_cfg(tmp_path, epochs=3, schedule__time_budget_s=8)
    metrics = trainer.train(cfg)
    run = tmp_path / "run"
    for name in ("model/model.safetensors", "metrics.json", "log.csv", "config.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["top1"] == metrics["top1"]
    rows = RunLogger(run).read_history(99)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 6), (2, 8)]
    assert rows[-1]["val_metric"] is not None  # the last (partial) epoch was evaluated
    assert rows[-1]["lr"] == pytest.approx(cfg.optim.lr * cfg.schedule.min_lr_ratio, rel=1e-9)
    assert _manifest(run)["global_step"] == 8 and _state(run)["elapsed_s"] == 8.0


def test_resume_continues_the_budget(tmp_path, one_second_per_reading, monkeypatch):
    """Interrupted after 1 step of a 8 s budget, the resumed run trains 7 more steps, not 8."""
    cfg = tiny_cfg(tmp_path, epochs=3, schedule__time_budget_s=8)
    original = loop.train_one_epoch

    def interrupt_first_epoch(run, loader, epoch, start_batch, stop):
        stop.requested = epoch == 0 and start_batch == 0
        return original(run, loader, epoch, start_batch, stop)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupt_first_epoch)
    with pytest.raises(trainer.Interrupted):
        trainer.train(cfg)
    run = tmp_path / "run"
    assert _manifest(run)["global_step"] == 1 and _state(run)["elapsed_s"] == 1.0
    trainer.train(cfg, resume=True)
    assert _manifest(run)["global_step"] == 8 and _state(run)["elapsed_s"] == 8.0
    assert [(r["epoch"], r["step"]) for r in RunLogger(run).read_history(99)] == [(1, 6), (2, 8)]
    trainer.train(cfg, resume=True)  # the budget is spent: nothing more trains
    assert _manifest(run)["global_step"] == 8


def test_clock_agrees_without_a_process_group():
    timer = TrainClock(budget_s=2.0)
    timer.tick(DistInfo())
    assert 0 <= timer.elapsed < 2.0 and not timer.spent
    timer.elapsed = 2.0
    assert timer.spent and timer.progress == 1.0
