"""One training epoch: forward, loss, backward with accumulation, clipping, step, EMA."""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from vitkit.engine.distributed import all_reduce_sum, unwrap
from vitkit.engine.evaluate import autocast
from vitkit.engine.losses import split_outputs
from vitkit.errors import VitkitError


class NonFiniteLoss(VitkitError):
    """The loss became NaN or inf: training stops, the last good checkpoint is kept."""


@dataclass
class StopFlag:
    """Set by SIGINT (first Ctrl-C): the loop saves a checkpoint at the next step boundary."""

    requested: bool = False
    _previous: object = None

    def install(self) -> StopFlag:
        def handler(signum, frame):
            if self.requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    count_batches: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    images: int = 0
    seconds: float = 0.0
    batches_done: int = 0
    interrupted: bool = False

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1.0, self.count_batches)

    @property
    def acc(self) -> float:
        return self.correct / max(1.0, self.count)


def batch_accuracy(logits: torch.Tensor, target: torch.Tensor, task: str, ignore_index: int) -> tuple[float, float]:
    """(correct, counted): samples for classification (soft targets by argmax), pixels for segmentation."""
    with torch.no_grad():
        if task == "segmentation":
            if logits.shape[-2:] != target.shape[-2:]:
                logits = torch.nn.functional.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear")
            keep = target != ignore_index
            return float((logits.argmax(dim=1).eq(target) & keep).sum()), float(keep.sum())
        hard = target.argmax(dim=-1) if target.ndim == 2 else target
        return float(logits.argmax(dim=-1).eq(hard).sum()), float(len(target))


def _forward_backward(run, images, target, sync: bool) -> tuple[float, torch.Tensor]:
    ctx = contextlib.nullcontext() if sync or not hasattr(run.model, "no_sync") else run.model.no_sync()
    with ctx:
        with autocast(run.cfg.precision):
            outputs = run.model(images)
            loss = run.loss_fn(outputs, target, images)
        (loss / run.cfg.grad_accum).backward()
    logits, _ = split_outputs(outputs)
    return float(loss.detach()), logits.detach()


def _optimizer_step(run) -> None:
    if run.cfg.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(unwrap(run.model).parameters(), run.cfg.clip_grad)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(unwrap(run.model))
    run.global_step += 1


def train_one_epoch(run, loader, epoch: int, start_batch: int, stop: StopFlag) -> EpochStats:
    """Train over ``loader`` (already positioned after ``start_batch`` batches)."""
    cfg, info, stats = run.cfg, run.info, EpochStats(batches_done=start_batch)
    run.model.train()
    total = len(loader)  # batches in a whole epoch (the sampler skips those already done)
    bar = tqdm(loader, total=total, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not (cfg.progress and info.is_main), leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    for images, target in bar:
        if run.batch_transform is not None:
            images, target = run.batch_transform(images, target)
        i = stats.batches_done
        step_now = (i + 1) % cfg.grad_accum == 0 or i + 1 == total
        loss, logits = _forward_backward(run, images, target, sync=step_now)
        correct, counted = batch_accuracy(logits, target, run.task, run.ignore_index)
        loss_sum, correct, counted, stop_votes = all_reduce_sum(
            [loss, correct, counted, float(stop.requested)], info)
        if not math.isfinite(loss_sum):
            raise NonFiniteLoss(
                f"loss is {loss_sum / info.world_size} at epoch {epoch + 1}, batch {i + 1}; the last good checkpoint "
                f"in {run.run_dir}/checkpoint is kept: lower optim.lr, set clip_grad or try precision=fp32")
        if step_now:
            _optimizer_step(run)
        stats.loss_sum += loss_sum / info.world_size
        stats.count_batches += 1
        stats.correct += correct
        stats.count += counted
        stats.images += len(images) * info.world_size
        stats.batches_done = i + 1
        stats.seconds = time.perf_counter() - t0
        bar.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.acc:.3f}",
                        img_s=f"{stats.images / max(stats.seconds, 1e-9):.0f}", refresh=False)
        if stop_votes > 0 and step_now and stats.batches_done < total:
            stats.interrupted = True
            break
    bar.close()
    return stats
