"""One training epoch: forward, loss, backward with accumulation, clipping, step, EMA.

Nothing is read back to the host per step: the running loss, accuracy and a non-finite-loss
marker are summed on the device and read (and reduced over processes) every ``log_every``
optimizer steps and at the end of the epoch.
"""
from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm import tqdm

from vitkit.engine.checkpoint import has_checkpoint
from vitkit.engine.device import autocast, to_device
from vitkit.engine.distributed import all_reduce_, any_rank, unwrap
from vitkit.engine.finetune import train_mode
from vitkit.engine.losses import split_outputs
from vitkit.errors import VitkitError

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")
NO_BAD = 2**62  # "no non-finite loss yet" marker for the first-bad-batch index


class NonFiniteLoss(VitkitError):
    """The loss became NaN or inf: training stops; the last good checkpoint, if any, is kept."""


@dataclass
class StopFlag:
    """Set by SIGINT (Ctrl-C), SIGTERM or SIGUSR1 (cluster preemption / requeue): the loop saves
    a checkpoint at the next step boundary. A second Ctrl-C stops at once."""

    requested: bool = False
    signum: int | None = None
    _previous: dict = field(default_factory=dict)

    def install(self) -> StopFlag:
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested, self.signum = True, self.signum or signum

        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def preempted(self) -> bool:
        """The stop came from the cluster (SIGTERM / SIGUSR1), not from Ctrl-C."""
        return self.signum is not None and self.signum != signal.SIGINT


@dataclass
class EpochStats:
    """Host copies of the epoch's running sums, as of the last log interval (or the epoch's end)."""

    loss_sum: float = 0.0
    count_batches: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    images: int = 0
    seconds: float = 0.0
    batches_done: int = 0
    interrupted: bool = False
    budget_spent: bool = False  # the run's time budget ran out (at the end of this epoch or in it)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1.0, self.count_batches)

    @property
    def acc(self) -> float:
        return self.correct / max(1.0, self.count)

    SUMS = ("loss_sum", "count_batches", "correct", "count", "images", "seconds")

    def sums(self) -> dict:
        """The running sums (saved with a mid-epoch checkpoint, so the resumed epoch logs whole)."""
        return {name: getattr(self, name) for name in self.SUMS}

    def plus(self, earlier: dict | None) -> EpochStats:
        """These stats with the sums of the same epoch's earlier part (before a mid-epoch stop) added."""
        for name, value in (earlier or {}).items():
            if name in self.SUMS:
                setattr(self, name, getattr(self, name) + value)
        return self


class DeviceSums:
    """Loss, correct and counted summed on the device; the first batch with a non-finite loss."""

    def __init__(self, device: torch.device):
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(3, dtype=self.dtype, device=device)  # loss, correct, counted
        self.bad_at = torch.full((), NO_BAD, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), dtype=self.dtype, device=device)

    def add(self, batch: int, loss: torch.Tensor, correct, counted) -> None:
        loss = loss.detach().to(self.dtype)
        self.sums[0] += loss
        self.sums[1] += correct
        self.sums[2] += counted
        first = ~torch.isfinite(loss) & (self.bad_at == NO_BAD)
        self.bad_loss = torch.where(first, loss, self.bad_loss)
        self.bad_at = torch.where(first, batch, self.bad_at)

    def read(self, info) -> tuple[list[float], int, float]:
        """(summed over processes: loss, correct, counted; first bad batch; its loss here)."""
        sums, bad_at = self.sums.clone(), self.bad_at.clone()
        all_reduce_([sums], info)
        all_reduce_([bad_at], info, op=dist.ReduceOp.MIN)
        first_bad = int(bad_at)
        here = float(self.bad_loss) if int(self.bad_at) == first_bad else float("nan")
        return sums.tolist(), first_bad, here


def batch_accuracy(logits: torch.Tensor, target: torch.Tensor, task: str, ignore_index: int):
    """(correct, counted) as device tensors: samples for classification (soft targets by
    argmax), pixels for segmentation."""
    with torch.no_grad():
        if task == "segmentation":
            if logits.shape[-2:] != target.shape[-2:]:
                logits = torch.nn.functional.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear")
            keep = target != ignore_index
            return (logits.argmax(dim=1).eq(target) & keep).sum(), keep.sum()
        hard = target.argmax(dim=-1) if target.ndim == 2 else target
        return logits.argmax(dim=-1).eq(hard).sum(), len(target)


def _forward_backward(run, images, target, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits), both detached, after ``backward`` of the (scaled) loss / grad_accum."""
    ctx = contextlib.nullcontext() if sync or not hasattr(run.model, "no_sync") else run.model.no_sync()
    with ctx:
        with autocast(run.cfg.precision, run.info.device):
            outputs = run.model(images)
            loss = run.loss_fn(outputs, target, images)
        run.scaler.scale(loss / run.cfg.grad_accum).backward()
    logits, _ = split_outputs(outputs)
    return loss.detach(), logits.detach()


def _optimizer_step(run) -> None:
    if run.cfg.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)  # fp16: clip the true gradients
        torch.nn.utils.clip_grad_norm_(unwrap(run.model).parameters(), run.cfg.clip_grad)
    run.scaler.step(run.optimizer)  # fp16: skipped when a gradient overflowed
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.clock.tick(run.info)  # before the scheduler: a time-budget schedule reads it
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(unwrap(run.model))
    run.global_step += 1


def _to_model_input(run, images, target):
    """The batch on the run's device, MixUp/CutMix applied, in the model's memory format."""
    images, target = to_device(images, run.info.device), to_device(target, run.info.device)
    if run.batch_transform is not None:
        images, target = run.batch_transform(images, target)
    if run.cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target


def _refresh(run, stats: EpochStats, sums: DeviceSums, epoch: int, batches: int, bar) -> None:
    """Read the device sums into ``stats`` (one host sync); stop on a non-finite loss."""
    (loss_sum, correct, counted), bad_at, bad_loss = sums.read(run.info)
    if bad_at != NO_BAD:
        kept = (f"the last good checkpoint in {run.run_dir}/checkpoint is kept" if has_checkpoint(run.run_dir)
                else "no checkpoint was saved yet, so start again")
        raise NonFiniteLoss(f"loss is {bad_loss} at epoch {epoch + 1}, batch {bad_at + 1}; {kept}: "
                            "lower optim.lr, set clip_grad or try precision=fp32")
    stats.loss_sum, stats.count_batches = loss_sum / run.info.world_size, float(batches)
    stats.correct, stats.count = correct, counted
    bar.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.acc:.3f}",
                    img_s=f"{stats.images / max(stats.seconds, 1e-9):.0f}", refresh=False)


def train_one_epoch(run, loader, epoch: int, start_batch: int, stop: StopFlag) -> EpochStats:
    """Train over ``loader`` (already positioned after ``start_batch`` batches)."""
    cfg, info, stats = run.cfg, run.info, EpochStats(batches_done=start_batch)
    sums = DeviceSums(info.device)
    run.model.train()
    train_mode(unwrap(run.model), cfg.finetune, epoch)  # a head-only epoch: frozen backbone in eval mode
    total = len(loader)  # batches in a whole epoch (the sampler skips those already done)
    bar = tqdm(loader, total=total, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not (cfg.progress and info.is_main), leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    run.clock.start()
    for images, target in bar:
        images, target = _to_model_input(run, images, target)
        i = stats.batches_done
        step_now = (i + 1) % cfg.grad_accum == 0 or i + 1 == total
        loss, logits = _forward_backward(run, images, target, sync=step_now)
        sums.add(i, loss, *batch_accuracy(logits, target, run.task, run.ignore_index))
        if step_now:
            _optimizer_step(run)
        stats.images += len(images) * info.world_size
        stats.batches_done = i + 1
        stats.seconds = time.perf_counter() - t0
        if step_now and run.global_step % cfg.log_every == 0:
            _refresh(run, stats, sums, epoch, stats.batches_done - start_batch, bar)
        if step_now and run.clock.spent:  # the same step on every process (the clock is agreed)
            stats.budget_spent = True
            break
        if step_now and stats.batches_done < total and any_rank(stop.requested, info):
            stats.interrupted = True
            break
    bar.close()
    _refresh(run, stats, sums, epoch, stats.batches_done - start_batch, bar)
    stats.seconds = time.perf_counter() - t0
    return stats
