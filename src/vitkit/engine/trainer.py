"""``train(cfg)``: build data + model from the registry, fit, checkpoint, evaluate, plot.

The trainer only uses the registry and the backbone contract (``img_size``, ``in_chans``,
``num_classes`` in the config; logits (B, K) or (B, K, H, W) from ``forward``), so it
trains any registered family. Device, precision and distribution are decided once, in
:func:`train` and :func:`prepare`. The data order and all randomness of epoch ``e`` are a pure
function of ``(seed, e, rank)``, which makes a resumed run bit-identical to an
uninterrupted one wherever determinism is on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.config import image_size
from vitkit.data import DataBundle, build_data
from vitkit.engine import distributed as D
from vitkit.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from vitkit.engine.clock import TrainClock
from vitkit.engine.device import device_rng_state, grad_scaler, keep_host_memory, set_determinism, set_device_rng_state
from vitkit.engine.evaluate import check_tta, eval_loader, evaluate, headline
from vitkit.engine.finetune import set_trainable
from vitkit.engine.logging import RunLogger
from vitkit.engine.loop import StopFlag, train_one_epoch
from vitkit.engine.losses import build_loss
from vitkit.engine.optim import ModelEMA, build_optimizer, build_scheduler
from vitkit.engine.run_config import RunConfig, save_run_config
from vitkit.engine.runlock import lock_run_dir
from vitkit.errors import VitkitError
from vitkit.registry import get_config, get_entry, load_into, pretrained_preprocess

EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_PREEMPTED = 75  # SIGTERM / SIGUSR1 (sysexits EX_TEMPFAIL: try again later, with --resume)


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was saved; the command exits with code 130."""

    exit_code = EXIT_INTERRUPTED


class Preempted(Interrupted):
    """SIGTERM or SIGUSR1 (cluster preemption / requeue): a checkpoint was saved; exit code 75."""

    exit_code = EXIT_PREEMPTED


@dataclass
class Run:
    """Everything one training run holds (built by :func:`prepare`)."""

    cfg: RunConfig
    run_dir: Path
    info: D.DistInfo
    bundle: DataBundle
    model: torch.nn.Module  # possibly DDP- and/or compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEMA | None
    loss_fn: Any
    scaler: torch.amp.GradScaler  # fp16 loss scaling (a pass-through otherwise)
    logger: RunLogger
    clock: TrainClock = field(default_factory=TrainClock)  # training time (and the time budget)
    global_step: int = 0
    history: list = field(default_factory=list)
    validated_last: bool = False  # the last epoch's validation ran (on every rank's say-so)
    partial: dict | None = None  # sums of the resumed epoch's part before a mid-epoch stop
    command: str | None = None  # the command line that started (or resumed) the run, for its model card

    @property
    def task(self) -> str:
        return self.bundle.task

    @property
    def ignore_index(self) -> int:
        return self.bundle.ignore_index

    @property
    def batch_transform(self):
        return self.bundle.batch_transform

    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and published: the EMA if on, else the raw model."""
        return self.ema.module if self.ema is not None else D.unwrap(self.model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of epoch ``epoch`` on process ``rank`` (augmentation, dropout, MixUp)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**63


def rng_state(device: torch.device | None = None) -> dict:
    """This process's RNG states: torch (CPU and ``device``), Python, NumPy."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if device is not None and device.type != "cpu":
        state["device"] = device_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if device is not None and device.type != "cpu":
        set_device_rng_state(state.get("device"), device)


def resolve_data_config(cfg: RunConfig) -> RunConfig:
    """Data at the model's input size unless ``data.img_size`` is set (then the model follows)."""
    if cfg.data.img_size is not None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, img_size=cfg.model.img_size[0]))


DATA_SIZED = ("num_classes", "in_chans", "img_size")  # model fields that follow the data


def fields_set_by_data(cfg: RunConfig) -> list[str]:
    """The :data:`DATA_SIZED` fields the run leaves to the data: those still at the preset's value."""
    preset = get_config(cfg.model_name)
    return [k for k in DATA_SIZED if getattr(cfg.model, k) == getattr(preset, k)]


def model_config_for(cfg: RunConfig, bundle: DataBundle):
    """The run's model config sized for the data (classes, channels, image size); a size the
    run changed from its preset must agree with the data."""
    sizes = {"num_classes": bundle.num_classes, "in_chans": bundle.in_chans, "img_size": image_size(bundle.img_size)}
    free = fields_set_by_data(cfg)
    for key, value in sizes.items():
        given = getattr(cfg.model, key)
        if given != value and key not in free:
            shown = given[0] if key == "img_size" and given[0] == given[1] else given
            raise VitkitError(f"model.{key}={shown} does not match the data ({key}={getattr(bundle, key)}); "
                              "drop the override or change the data (e.g. data.img_size)")
    return dataclasses.replace(cfg.model, **sizes)


def init_preprocess(cfg: RunConfig):
    """The preprocessing saved with the ``init`` weights (None: none given, or a bare checkpoint file)."""
    return None if cfg.init is None else pretrained_preprocess(cfg.init)


def build_model(cfg: RunConfig, bundle: DataBundle) -> torch.nn.Module:
    """The registered model sized for the data (classes, channels, image size), starting from
    the ``init`` weights (adapted to the data: head, channels, E_pos) when given."""
    model = get_entry(cfg.model_name).cls(model_config_for(cfg, bundle))
    if cfg.init is not None:
        load_into(model, cfg.init)
    model.preprocess, model.class_names = bundle.preprocess, list(bundle.class_names)  # saved with the weights
    return model


def load_teacher(cfg: RunConfig, bundle: DataBundle, device: torch.device):
    if cfg.distill.teacher is None:
        return None
    from vitkit.registry import create_model

    teacher = create_model(cfg.distill.teacher).eval().to(device)
    if teacher.in_chans != bundle.in_chans or teacher.num_classes != bundle.num_classes:
        raise VitkitError(f"teacher {cfg.distill.teacher} expects {teacher.in_chans} channels / {teacher.num_classes} "
                          f"classes but the data has {bundle.in_chans} / {bundle.num_classes}; "
                          "train a matching teacher")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def prepare(cfg: RunConfig, run_dir: Path, info: D.DistInfo) -> Run:
    """Data, model (on ``info.device``, wrapped for the world), optimizer, schedule, EMA, loss."""
    set_determinism(cfg.deterministic, info.device)
    if info.device.type == "cpu":
        keep_host_memory()  # big tensors reuse mapped pages (VITKIT_HOST_MEMORY=default: malloc as it is)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    bundle = build_data(cfg.data, init_preprocess(cfg))
    for tta in (cfg.tta, cfg.last_tta):
        check_tta(tta, bundle.task)  # before any training, not at the first evaluation
    model = build_model(cfg, bundle).to(info.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = -(-(len(bundle.train) // info.world_size // D.per_rank_batch(cfg.batch_size, info)) // cfg.grad_accum)
    if steps < 1:
        raise VitkitError(f"the training set ({len(bundle.train)} images) is smaller than one batch of "
                          f"{cfg.batch_size}; lower batch_size or use more data")
    if cfg.finetune.mode == "linear":
        set_trainable(model, only_head=True)  # the optimizer holds the head alone
    ema = ModelEMA(model, cfg.ema.decay) if cfg.ema.enabled else None
    loss_fn = build_loss(bundle.task, cfg.label_smoothing, bundle.ignore_index, load_teacher(cfg, bundle, info.device),
                         cfg.distill)
    wrapped = D.wrap_model(model, info, cfg.parallel, cfg.precision, cfg.fsdp_mixed_precision)
    optimizer = build_optimizer(model, cfg.optim)  # after wrapping: FSDP replaces the parameters by shards
    clock = TrainClock(cfg.schedule.time_budget_s)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps, cfg.epochs, clock)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    logger = RunLogger(run_dir, cfg.tensorboard, enabled=info.is_main)
    cfg = dataclasses.replace(cfg, model=model.config)  # what is saved: the model as built
    return Run(cfg, run_dir, info, bundle, wrapped, optimizer, scheduler, ema, loss_fn,
               grad_scaler(cfg.precision, info.device), logger, clock)


def publish_model(run: Run) -> None:
    """RUN_DIR/model: the eval weights as a ``save_pretrained`` dir (rank 0 writes it; the shards
    of a sharded model are gathered first, by every process)."""
    model = run.eval_model()
    if D.is_sharded(model):
        plain = D.gathered_copy(model, run.info)
        if plain is not None:  # rank 0
            plain.preprocess, plain.class_names = model.preprocess, model.class_names
        model = plain
    if run.info.is_main:
        model.save_pretrained(run.run_dir / "model")


def save_state(run: Run, epoch: int, batch_in_epoch: int, partial: dict | None = None) -> None:
    """Publish the eval weights (RUN_DIR/model) and a resumable checkpoint (every process);
    ``partial``: the stopped epoch's running sums, so that its log row is whole after a resume."""
    publish_model(run)
    state = {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": run.global_step,
             "elapsed_s": run.clock.elapsed, "scheduler": run.scheduler.state_dict(), "rng": rng_state(run.info.device),
             "history": json.dumps(run.history)}
    if partial is not None:
        state["partial_epoch"] = partial
    if run.scaler.is_enabled():
        state["scaler"] = run.scaler.state_dict()
    save_checkpoint(run.run_dir, D.unwrap(run.model), run.ema, state, run.optimizer, run.info)


def restore(run: Run) -> tuple[int, int, dict | None]:
    """Load ``RUN_DIR/checkpoint`` into ``run``: (epoch, batch_in_epoch, rng state)."""
    state = load_checkpoint(run.run_dir, D.unwrap(run.model), run.ema, run.optimizer, run.info)
    run.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.global_step = int(state["global_step"])
    run.clock.elapsed = float(state.get("elapsed_s", 0.0))  # a time budget continues where it stopped
    run.history = json.loads(state["history"])
    epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
    run.partial = state.get("partial_epoch") if batch else None
    if batch and state["saved_world_size"] != run.info.world_size and run.info.is_main:
        print(f"note: the checkpoint was written by {state['saved_world_size']} processes, this run has "
              f"{run.info.world_size}: epoch {epoch + 1} continues with its data sharded the new way", flush=True)
    return epoch, batch, state["rng"]


def epoch_row(run: Run, epoch: int, stats, metrics: dict | None) -> dict:
    return {"epoch": epoch + 1, "step": run.global_step, "lr": max(g["lr"] for g in run.optimizer.param_groups),
            "train_loss": stats.loss, "train_acc": stats.acc,
            "val_loss": None if metrics is None else metrics["loss"],
            "val_metric": None if metrics is None else headline(metrics),
            "img_per_s": stats.images / max(stats.seconds, 1e-9), "seconds": stats.seconds}


def validate(run: Run, last: bool = False) -> dict:
    """Evaluate the eval weights on the validation set: each process its share, counts summed;
    the ``last`` evaluation with the run's ``final_tta``."""
    model = run.eval_model()
    loader = eval_loader(run.bundle.val, run.cfg.eval_batch_size, run.cfg.workers, run.info)
    return evaluate(model, loader, run.task, run.bundle.num_classes, run.ignore_index, run.cfg.precision,
                    run.info, lockstep=D.is_sharded(model), tta=run.cfg.last_tta if last else run.cfg.tta)


def print_epoch(run: Run, row: dict) -> None:
    if not run.info.is_main:
        return
    val = "" if row["val_metric"] is None else f"  val_loss {row['val_loss']:.4f}  val {row['val_metric']:.4f}"
    print(f"epoch {row['epoch']}/{run.cfg.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}{val}"
          f"  {row['img_per_s']:.0f} img/s  {row['seconds']:.1f}s", flush=True)


def print_budget_spent(run: Run, epoch: int, batch: int) -> None:
    if run.info.is_main:
        print(f"time budget of {run.cfg.schedule.time_budget_s:g}s spent ({run.clock.elapsed:.1f}s of training) "
              f"at epoch {epoch + 1}, batch {batch}, step {run.global_step}", flush=True)


def stopped(run: Run, stop: StopFlag, where: str) -> Interrupted:
    """The exception that ends a run stopped by a signal (after its checkpoint was saved)."""
    preempted = D.any_rank(stop.preempted, run.info)
    cls, what = (Preempted, "preempted") if preempted else (Interrupted, "interrupted")
    return cls(f"{what} at {where}; checkpoint saved: continue with --resume {run.run_dir}")


def fit(run: Run, start_epoch: int = 0, start_batch: int = 0, rng: dict | None = None) -> dict | None:
    """Epochs ``start_epoch``.. of training; returns the last validation metrics."""
    cfg, stop = run.cfg, StopFlag().install()
    loader, sampler = D.train_loader(run.bundle.train, cfg.batch_size, cfg.seed, run.info, cfg.workers)
    metrics = None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if run.clock.spent:  # resumed after the time budget ran out: nothing left to train
                break
            seed_everything(epoch_seed(cfg.seed, epoch, run.info.rank))
            sampler.set_epoch(epoch)
            if start_batch and epoch == start_epoch:
                sampler.skip = start_batch * loader.batch_size
                set_rng_state(rng, run.info.device)
            stats = train_one_epoch(run, loader, epoch, start_batch if epoch == start_epoch else 0, stop)
            if epoch == start_epoch:
                stats.plus(run.partial)  # a resumed epoch: its earlier part too, so the row covers it whole
            if stats.interrupted:
                save_state(run, epoch, stats.batches_done, partial=stats.sums())
                raise stopped(run, stop, f"epoch {epoch + 1}, batch {stats.batches_done}")
            last = epoch + 1 == cfg.epochs or stats.budget_spent
            metrics = validate(run, last) if last or (epoch + 1) % cfg.eval_every == 0 else None
            run.validated_last = last
            run.history.append(epoch_row(run, epoch, stats, metrics))
            run.logger.log_epoch(run.history)
            print_epoch(run, run.history[-1])
            save_state(run, epoch + 1, 0)
            if stats.budget_spent:
                print_budget_spent(run, epoch, stats.batches_done)
                break
    finally:
        stop.uninstall()
    return metrics


def finish(run: Run, metrics: dict | None) -> dict:
    """metrics.json and plots of the final eval weights (rank 0)."""
    from vitkit.engine.report import segmentation_examples, write_report

    if not run.validated_last:
        metrics = validate(run, last=True)
    examples = segmentation_examples(run.eval_model(), run.bundle) if run.task == "segmentation" else None
    if run.info.is_main:
        write_report(run, metrics, examples)
    return metrics


def train(cfg: RunConfig, resume: bool = False, command: str | None = None) -> dict:
    """Train ``cfg`` into ``cfg.out_dir`` (or continue it with ``resume``); final metrics.
    ``command`` (the command line) is recorded in metrics.json and the model card."""
    info = D.setup(cfg.device)
    try:
        run_dir = Path(cfg.out_dir)
        cfg = resolve_data_config(cfg)
        with lock_run_dir(run_dir, owner=info.is_main) or contextlib.nullcontext():  # one writer per run dir
            return _train_locked(cfg, run_dir, info, resume, command)
    finally:
        D.cleanup(info)


def _train_locked(cfg: RunConfig, run_dir: Path, info: D.DistInfo, resume: bool, command: str | None) -> dict:
    if not resume and has_checkpoint(run_dir):
        raise VitkitError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                          "or pick another --out")
    run = prepare(cfg, run_dir, info)
    run.command = command
    start = restore(run) if resume else (0, 0, None)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(run.cfg, run_dir)
        run.logger.rewrite(run.history)
    try:
        metrics = fit(run, *start)
        return finish(run, metrics)
    finally:
        run.logger.close()
