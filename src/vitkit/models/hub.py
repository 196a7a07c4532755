"""The ``save_pretrained`` format: safetensors weights + a JSON config (no pickle is ever executed).

    DIR/model.safetensors   the state dict
    DIR/config.json         {"family", "config", "preprocess", "class_names", "task", ...extras}

Reading a directory back into a model is :func:`vitkit.create_model`'s job; this module
only writes and reads the files.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vitkit.config import to_dict
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_bytes, atomic_write_json
from vitkit.preprocess import Preprocess

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
    """Write weights + ``config.json``: family, config, the model's preprocess, class names and
    task, then ``extra`` (a ``preprocess`` dict in ``extra`` is read like a saved one)."""
    path = Path(path)
    extra = dict(extra or {})
    pre = Preprocess.from_dict(extra.pop("preprocess"), model.config) if "preprocess" in extra else model.preprocess
    meta = {"family": model.family, "config": to_dict(model.config), "preprocess": pre.to_dict(),
            "class_names": model.class_names, "task": model.task, **extra}
    save_state_dict(model.state_dict(), path / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_json(path / CONFIG_NAME, meta)


def read_metadata(path) -> dict:
    """The whole ``config.json`` of a ``save_pretrained`` dir (family, config and extras)."""
    cfg_path = Path(path) / CONFIG_NAME
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VitkitError(f"cannot read model config {cfg_path}: {exc}; is this a save_pretrained directory?") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("family"), str) and isinstance(meta.get("config"), dict)):
        raise VitkitError(f"cannot read model config {cfg_path}: it has no 'family' and 'config'; "
                          "is this a save_pretrained directory?")
    return meta


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
