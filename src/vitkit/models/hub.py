"""The ``save_pretrained`` format: safetensors weights + a JSON config (no pickle is ever executed).

    DIR/model.safetensors   the state dict
    DIR/config.json         {"family", "config", "preprocess", "class_names", "task",
                             "weights_sha256", ...extras}
    DIR/README.md           the model card (vitkit.models.card), as the Hugging Face Hub shows it

``weights_sha256`` is the SHA-256 of ``model.safetensors``: every load of a directory that
records it checks it first, so flipped or truncated weights are an error, never silently
different predictions. Weights from elsewhere (a bare ``.safetensors`` file) are checked as
far as the format allows: the safetensors header, then names, shapes, dtypes and finite
values against the model. Reading a directory back into a model is
:func:`vitkit.create_model`'s job; this module only writes, reads and checks the files.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from vitkit.config import to_dict
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from vitkit.models.card import CARD_NAME, model_card
from vitkit.preprocess import Preprocess

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def is_pretrained_dir(path) -> bool:
    try:
        p = Path(path)
        return p.is_dir() and (p / CONFIG_NAME).is_file()
    except (TypeError, OSError):
        return False


def save_state_dict(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> str:
    """Atomically write a safetensors file (tensors made contiguous and unshared); its SHA-256."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def _weights_path(path) -> Path:
    path = Path(path)
    path = path / WEIGHTS_NAME if path.is_dir() else path
    if not path.is_file():
        raise VitkitError(
            f"weights file not found: {path}; pass a directory from save_pretrained or a .safetensors file")
    return path


def _parse(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VitkitError(
            f"cannot read weights {path}: the file is corrupt or truncated ({str(exc).splitlines()[0]}); "
            "re-save or re-download it"
        ) from None


def load_state_dict(path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file (checked against ``sha256`` when given); a missing, corrupt,
    truncated or altered file is a clear error."""
    path = _weights_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VitkitError(f"cannot read weights {path} ({exc.strerror}); check its permissions") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise VitkitError(f"weights {path} do not match the SHA-256 in {path.parent / CONFIG_NAME} (corrupt or "
                          "altered since they were saved); nothing was loaded: re-save or re-download them")
    return _parse(data, path)


def save_pretrained(model, path, extra: dict | None = None) -> None:
    """Write weights + ``config.json``: family, config, the model's preprocess, class names and
    task, then ``extra`` (a ``preprocess`` dict in ``extra`` is read like a saved one); and the
    model card ``README.md``."""
    path = Path(path)
    extra = dict(extra or {})
    pre = Preprocess.from_dict(extra.pop("preprocess"), model.config) if "preprocess" in extra else model.preprocess
    meta = {"family": model.family, "config": to_dict(model.config), "preprocess": pre.to_dict(),
            "class_names": model.class_names, "task": model.task, **extra}
    meta["weights_sha256"] = save_state_dict(model.state_dict(), path / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_json(path / CONFIG_NAME, meta)
    atomic_write_text(path / CARD_NAME, model_card(meta, path.resolve().name))


def read_metadata(path) -> dict:
    """The whole ``config.json`` of a ``save_pretrained`` dir (family, config and extras), checked."""
    cfg_path = Path(path) / CONFIG_NAME
    fix = "re-save the model (save_pretrained) or pass another dir"
    meta = read_json(cfg_path, "model config", fix)
    if "family" not in meta and {"optim", "data", "epochs"} <= set(meta):  # a run's own config.json
        run = Path(path)
        raise VitkitError(f"{run} is a `vitkit train` run dir with no saved model yet (it stopped before its first "
                          f"epoch ended); continue it with `vitkit train --resume {run}`")
    for problem in _metadata_problems(meta):
        raise VitkitError(f"model config {cfg_path}: {problem}; {fix}")
    return meta


def _metadata_problems(meta: dict):
    """What is wrong with the shape of a config.json (each a phrase), first problem first."""
    if not isinstance(meta.get("family"), str):
        yield "'family' must be a model family name (a string); is this a save_pretrained directory?"
    if not isinstance(meta.get("config"), dict):
        yield "'config' must be an object of the model's config fields"
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        yield f"'class_names' must be a list of strings, got {_brief(names)}"
    if meta.get("task", "classification") not in ("classification", "segmentation"):
        yield f"'task' must be classification or segmentation, got {_brief(meta.get('task'))}"
    if meta.get("preprocess") is not None and not isinstance(meta["preprocess"], dict):
        yield f"'preprocess' must be an object, got {_brief(meta['preprocess'])}"
    digest = meta.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in "0123456789abcdef" for c in digest)):
        yield f"'weights_sha256' must be 64 hex digits, got {_brief(digest)}"


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_class_names(names, num_classes: int, source: str) -> None:
    """Saved class names fit the model's output: one per class."""
    if names is not None and len(names) != num_classes:
        raise VitkitError(f"{source}: 'class_names' has {len(names)} names but the model predicts {num_classes} "
                          "classes; fix the list or remove it")


def check_state_dict(model, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one clear error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    kinds = [f"{k} {state[k].dtype} vs model {own[k].dtype}" for k in own
             if k in state and _kind(state[k]) != _kind(own[k])]
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                         ("dtype mismatch", kinds), ("NaN or inf values", bad)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    if problems:
        raise VitkitError(
            f"weights from {source} do not fit {type(model).__name__}: {'; '.join(problems)}; "
            "build the model with the config the weights were saved with"
        )


def _kind(t: torch.Tensor) -> str:
    if t.is_floating_point() or t.is_complex():
        return "float"
    return "bool" if t.dtype == torch.bool else "int"
