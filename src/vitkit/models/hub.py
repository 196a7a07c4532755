"""Saving and loading weights: safetensors + a JSON config (no pickle is ever executed)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitkit.config import apply_overrides, from_dict, to_dict
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_bytes, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def is_pretrained_dir(path) -> bool:
    try:
        p = Path(path)
        return p.is_dir() and (p / CONFIG_NAME).is_file()
    except (TypeError, OSError):
        return False


def save_state_dict(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Atomically write a safetensors file (tensors made contiguous and unshared)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, corrupt or truncated file is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise VitkitError(
            f"weights file not found: {path}; pass a directory from save_pretrained or a .safetensors file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VitkitError(
            f"cannot read weights {path}: the file is corrupt or truncated ({str(exc).splitlines()[0]}); "
            "re-save or re-download it"
        ) from None


def save_pretrained(model, path, extra: dict | None = None) -> None:
    """Write weights + ``config.json`` ({family, config, **extra}); ``extra`` carries e.g.
    ``class_names`` and ``preprocess`` ({img_size, in_chans, mean, std}) for predict/explain."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"family": model.family, "config": to_dict(model.config), **(extra or {})}
    save_state_dict(model.state_dict(), path / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_json(path / CONFIG_NAME, meta)


def read_metadata(path) -> dict:
    """The whole ``config.json`` of a ``save_pretrained`` dir (family, config and extras)."""
    cfg_path = Path(path) / CONFIG_NAME
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VitkitError(f"cannot read model config {cfg_path}: {exc}; is this a save_pretrained directory?") from None


def resolve_model_dir(spec) -> Path | None:
    """A ``save_pretrained`` dir for ``spec``: the dir itself, or a training run's ``model/``."""
    p = Path(spec)
    if is_pretrained_dir(p / "model"):  # a run dir (it has its own run config.json too)
        return p / "model"
    if is_pretrained_dir(p):
        return p
    return None


def load_model(spec, **overrides):
    """A model from a registered name, a ``save_pretrained`` dir or a ``vitkit train`` run dir."""
    from vitkit.registry import create_model

    model_dir = resolve_model_dir(spec)
    if model_dir is not None:
        return load_pretrained(model_dir, **overrides)
    if any(sep in str(spec) for sep in ("/", "\\")) and not Path(spec).exists():
        raise VitkitError(f"path not found: {spec}; pass a model name, a save_pretrained dir or a run dir")
    return create_model(str(spec), **overrides)


def read_config(path):
    """(model class, config) from a ``save_pretrained`` directory."""
    from vitkit.registry import family_class

    meta = read_metadata(path)
    cfg_path = Path(path) / CONFIG_NAME
    try:
        cls = family_class(meta["family"])
        return cls, from_dict(cls.config_cls, meta["config"])
    except (KeyError, TypeError) as exc:
        raise VitkitError(f"cannot read model config {cfg_path}: {exc}; is this a save_pretrained directory?") from None


def check_state_dict(model, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one clear error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    if problems:
        raise VitkitError(
            f"weights from {source} do not fit {type(model).__name__}: {'; '.join(problems)}; "
            "build the model with the config the weights were saved with"
        )


def load_weights(model, path) -> None:
    """Load ``path`` (dir or .safetensors) into ``model``, strictly, after ``adapt_state_dict``."""
    state = model.adapt_state_dict(load_state_dict(path))
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)


def load_pretrained(path, **overrides):
    """Rebuild a model from a ``save_pretrained`` dir; overrides (e.g. img_size) applied on top."""
    cls, cfg = read_config(path)
    model = cls(apply_overrides(cfg, overrides))
    load_weights(model, path)
    return model
