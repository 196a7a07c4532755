"""The run configuration: one typed, nested dataclass; recipes are instances of it.

``RunConfig.model`` is the typed config of a registered preset (``model_name`` records
which), so ``--set model.depth=4`` or ``model.vt.num_tokens=8`` are checked against the
model's own config class like every other key; ``model=NAME`` switches to another preset.
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
    one_of,
    optional,
)
from vitkit.config import apply_overrides, from_dict, to_dict
from vitkit.data import DataConfig
from vitkit.engine.device import check_device_name
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_json
from vitkit.registry import get_config, get_entry

CONFIG_FILE = "config.json"
OPTIM_IMPLS = ("auto", "fused", "foreach", "for-loop")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (Loshchilov & Hutter, 2019): decoupled weight decay."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float | None = None  # layer-wise lr decay: lr * decay^(L - layer_id); None = off
    impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"  # the update kernel; auto = torch's choice

    checks: ClassVar[dict] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "betas": each(UNIT_OPEN, length=2),
                              "eps": POSITIVE, "impl": one_of(*OPTIM_IMPLS)}


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` (per optimizer step); with
    ``time_budget_s``, over training wall-clock time, and training stops when it is spent."""

    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    min_lr_ratio: float = 0.01
    time_budget_s: float | None = None  # seconds of training; None = the schedule follows steps

    checks: ClassVar[dict] = {"warmup_epochs": NON_NEGATIVE, "warmup_steps": optional(NON_NEGATIVE_INT),
                              "min_lr_ratio": UNIT, "time_budget_s": optional(POSITIVE)}


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
    model_name: str = ""  # the registered preset `model` comes from (filled in from a name)
    model: Any = "vit_mini_patch2_8"  # a preset name, or its typed config; always the config after init
    init: str | None = None  # pretrained weights to start from (any create_model pretrained= spec); None = random
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
    tta: Literal["none", "hflip", "shift", "flip-shift"] = "none"  # test-time augmentation of every evaluation:
    # hflip averages the class probabilities of each image and its mirror image (for models trained with flips);
    # shift (classification) of the image as it is and moved by 1/28 of the side in 4 directions (5 views);
    # flip-shift of both (10 views)
    final_tta: Literal["same", "none", "hflip", "shift", "flip-shift"] = "same"  # the last evaluation's (the run's
    # final metrics, and `vitkit eval` of its model by default): same = `tta`; a costlier mode only where it counts
    log_every: int = 50  # optimizer steps between reading the running loss/accuracy back to the host
    tensorboard: bool = True
    progress: bool = True
    out_dir: str = "runs/run"

    checks: ClassVar[dict] = {
        "epochs": COUNT, "batch_size": COUNT, "eval_batch_size": COUNT, "grad_accum": COUNT,
        "clip_grad": optional(POSITIVE), "label_smoothing": UNIT_OPEN, "seed": SEED, "workers": NON_NEGATIVE_INT,
        "threads": NON_NEGATIVE_INT, "eval_every": COUNT, "log_every": COUNT,
    }

    def __post_init__(self) -> None:
        if isinstance(self.model, str):  # a preset name: its config
            object.__setattr__(self, "model_name", self.model)
            object.__setattr__(self, "model", get_config(self.model))
        expected = type(get_entry(self.model_name).config)
        if type(self.model) is not expected:
            raise VitkitError(f"model is a {type(self.model).__name__} but preset '{self.model_name}' has a "
                              f"{expected.__name__}; pass the preset name or a config of its class")

    @property
    def last_tta(self) -> str:
        """The test-time augmentation of the run's last evaluation (``final_tta``, "same": ``tta``)."""
        return self.tta if self.final_tta == "same" else self.final_tta

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
        if getattr(self.model, "num_classes", 1) < 1:
            raise VitkitError(f"model.num_classes={self.model.num_classes} is out of range for training (>= 1: a "
                              "model without a head cannot be trained); drop the override (the data sets it)")
        if self.finetune.head_warmup_epochs < 0:
            raise VitkitError("finetune.head_warmup_epochs must be >= 0; set a valid value with --set")


def split_overrides(overrides: Mapping[str, Any]) -> tuple[str | None, dict, dict]:
    """(preset name from ``model=NAME`` or None, ``model.KEY`` overrides, run-config overrides)."""
    name, model, run = None, {}, {}
    for key, value in overrides.items():
        if key == "model_overrides":
            raise VitkitError("set model fields one at a time as model.NAME=VALUE (e.g. model.depth=6), "
                              "not model_overrides=...")
        if key == "model_name":
            raise VitkitError("choose the model preset with --model NAME (or model=NAME), not model_name=...")
        if key == "model":
            name = str(value)
        elif key.startswith("model."):
            model[key[len("model."):]] = value
        else:
            run[key] = value
    return name, model, run


def resolve(base: RunConfig, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Apply typed overrides to ``base``: ``model=NAME`` starts from that preset's config
    (unless it is ``base``'s own), then ``model.KEY`` overrides are checked against its class.
    A key that names no run-config field but a field of the model (``vt.num_tokens``) is a model key."""
    name, model_kv, run_kv = split_overrides(overrides or {})
    if name is not None and name != base.model_name:
        base = dataclasses.replace(base, model=name)
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    model_fields = {f.name for f in dataclasses.fields(base.model)}
    for key in list(run_kv):
        head = key.partition(".")[0]
        if head not in run_fields and head in model_fields:
            model_kv.setdefault(key, run_kv.pop(key))
    cfg = apply_overrides(base, run_kv)
    cfg = dataclasses.replace(cfg, model=apply_overrides(cfg.model, model_kv))
    cfg.validate()
    return cfg


def save_run_config(cfg: RunConfig, run_dir: Path) -> None:
    atomic_write_json(Path(run_dir) / CONFIG_FILE, to_dict(cfg))


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from :func:`to_dict` output, or from the layout with the preset name
    in ``model`` and its changed fields in ``model_overrides``."""
    data = dict(data)
    if isinstance(data.get("model"), str):
        name, model_data = data.pop("model"), data.pop("model_overrides", {})
    else:
        name, model_data = data.pop("model_name"), data.pop("model")
    cfg = RunConfig(model=name)
    model = from_dict(type(cfg.model), model_data, base=cfg.model)
    return dataclasses.replace(apply_overrides(cfg, data), model=model)


def load_run_config(run_dir) -> RunConfig:
    """The resolved config a run was started with (``RUN_DIR/config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise VitkitError(f"{path} not found; is {run_dir} a directory written by `vitkit train`?")
    try:
        return run_config_from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise VitkitError(f"cannot read run config {path}: {exc}; the file is corrupt") from None
