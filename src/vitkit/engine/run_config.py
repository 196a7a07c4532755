"""The run configuration: one typed, nested dataclass; recipes are instances of it.

``--set`` keys starting with ``model.`` override the model preset (checked against the
preset's own config class via :func:`vitkit.registry.get_config`); every other key goes
through :func:`vitkit.config.apply_overrides` on :class:`RunConfig`.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vitkit.checks import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    SEED,
    UNIT,
    UNIT_OPEN,
    check_config,
    each,
    optional,
)
from vitkit.config import apply_overrides, to_dict
from vitkit.data import DataConfig
from vitkit.engine.device import check_device_name
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_json

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (Loshchilov & Hutter, 2019): decoupled weight decay."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float | None = None  # layer-wise lr decay: lr * decay^(L - layer_id); None = off

    checks: ClassVar[dict] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "betas": each(UNIT_OPEN, length=2),
                              "eps": POSITIVE}


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` (per optimizer step)."""

    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    min_lr_ratio: float = 0.01

    checks: ClassVar[dict] = {"warmup_epochs": NON_NEGATIVE, "warmup_steps": optional(NON_NEGATIVE_INT),
                              "min_lr_ratio": UNIT}


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the weights: theta_ema <- d * theta_ema + (1 - d) * theta."""

    enabled: bool = False
    decay: float = 0.999

    checks: ClassVar[dict] = {"decay": UNIT_OPEN}


@dataclass(frozen=True)
class DistillConfig:
    """DeiT distillation (Touvron et al., 2021): the teacher is any saved vitkit model."""

    teacher: str | None = None  # a save_pretrained dir or a `vitkit train` run dir
    alpha: float = 0.5  # weight of the distillation term
    tau: float = 1.0  # temperature (soft distillation)
    kind: Literal["hard", "soft"] = "hard"

    checks: ClassVar[dict] = {"alpha": UNIT, "tau": POSITIVE}


@dataclass(frozen=True)
class FinetuneConfig:
    """What trains: ``full`` = every parameter; ``linear`` = the head alone (linear probe; the frozen
    backbone stays in eval mode, so BatchNorm statistics and dropout do not move); ``head-warmup`` =
    the head alone for ``head_warmup_epochs`` epochs, then every parameter."""

    mode: Literal["full", "linear", "head-warmup"] = "full"
    head_warmup_epochs: int = 1


@dataclass(frozen=True)
class RunConfig:
    model: str = "vit_mini_patch2_8"
    model_overrides: dict = field(default_factory=dict)  # typed values of `--set model.KEY=...`
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    epochs: int = 10
    batch_size: int = 64  # global batch (split across processes under torchrun)
    eval_batch_size: int = 256
    grad_accum: int = 1
    clip_grad: float | None = 1.0  # max global gradient norm; None = off
    label_smoothing: float = 0.0
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast; fp16 adds a GradScaler
    channels_last: bool = False  # channels-last memory format for the model and the batches
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2) the model
    fsdp_mixed_precision: bool = False  # fsdp + bf16/fp16: FSDP casts the weights instead of autocast
    seed: int = 0
    deterministic: bool | Literal["auto"] = "auto"  # auto: on for cpu, off for cuda/mps
    workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    threads: int = 0  # torch intra-op threads per process (0 = torch's default)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    log_every: int = 50  # optimizer steps between reading the running loss/accuracy back to the host
    tensorboard: bool = True
    progress: bool = True
    out_dir: str = "runs/run"

    checks: ClassVar[dict] = {
        "epochs": COUNT, "batch_size": COUNT, "eval_batch_size": COUNT, "grad_accum": COUNT,
        "clip_grad": optional(POSITIVE), "label_smoothing": UNIT_OPEN, "seed": SEED, "workers": NON_NEGATIVE_INT,
        "threads": NON_NEGATIVE_INT, "eval_every": COUNT, "log_every": COUNT,
    }

    def validate(self) -> None:
        """Every declared range of the run config and of the configs nested in it, then the
        combinations that no single range can express."""
        check_config(self)
        check_device_name(self.device)
        if self.parallel == "fsdp" and self.ema.enabled:
            raise VitkitError("ema.enabled is not supported with parallel=fsdp (the EMA would be a full, "
                              "unsharded copy on every process); turn one of them off")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise VitkitError("precision=fp16 is not supported with parallel=fsdp (its loss scaler would see only "
                              "this process's shard of the gradients); use precision=bf16")
        if self.optim.layer_decay is not None and not 0.0 < self.optim.layer_decay <= 1.0:
            raise VitkitError(f"optim.layer_decay={self.optim.layer_decay} is out of range (0, 1]; "
                              "set a valid value (e.g. --set optim.layer_decay=0.75) or none")
        if self.finetune.head_warmup_epochs < 0:
            raise VitkitError("finetune.head_warmup_epochs must be >= 0; set a valid value with --set")


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    """Separate ``model.KEY`` overrides (model preset) from run-config overrides."""
    model, run = {}, {}
    for key, value in overrides.items():
        if key == "model_overrides":
            raise VitkitError("set model fields one at a time as model.NAME=VALUE (e.g. model.depth=6), "
                              "not model_overrides=...")
        if key.startswith("model."):
            model[key[len("model."):]] = value
        else:
            run[key] = value
    return model, run


def resolve(base: RunConfig, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Apply typed overrides to ``base``; model keys are checked against the model preset."""
    from vitkit.registry import get_config

    model_kv, run_kv = split_overrides(overrides or {})
    cfg = apply_overrides(base, run_kv)
    merged = {**cfg.model_overrides, **model_kv}
    if "." in "".join(merged):
        raise VitkitError("nested model overrides are not supported; set model fields as model.NAME=VALUE")
    model_cfg = get_config(cfg.model, **merged)  # unknown keys / wrong types raise here
    typed = {k: getattr(model_cfg, k) for k in merged}
    cfg = dataclasses.replace(cfg, model_overrides=json.loads(json.dumps(typed)))
    cfg.validate()
    return cfg


def save_run_config(cfg: RunConfig, run_dir: Path) -> None:
    atomic_write_json(Path(run_dir) / CONFIG_FILE, to_dict(cfg))


def load_run_config(run_dir) -> RunConfig:
    """The resolved config a run was started with (``RUN_DIR/config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise VitkitError(f"{path} not found; is {run_dir} a directory written by `vitkit train`?")
    try:
        data = json.loads(path.read_text())
        model_overrides = data.pop("model_overrides", {})
        cfg = apply_overrides(RunConfig(), data)
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise VitkitError(f"cannot read run config {path}: {exc}; the file is corrupt") from None
    return dataclasses.replace(cfg, model_overrides=dict(model_overrides))
