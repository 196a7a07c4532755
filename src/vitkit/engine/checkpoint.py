"""Resumable checkpoints, written atomically and verified before anything is loaded.

    RUN_DIR/checkpoint/latest.json            {"dir": "step_000120", "files": {name: sha256}, ...}
    RUN_DIR/checkpoint/step_000120/model.safetensors, ema.safetensors, state.pt

Every file goes to a fresh directory (temp file + rename); ``latest.json`` is replaced
last, so a kill at any moment leaves the previous checkpoint intact. On load every file
is checked against its SHA-256 first: a corrupt or truncated checkpoint is an error,
never half loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import torch

from vitkit.errors import VitkitError
from vitkit.io import atomic_write_bytes, atomic_write_json
from vitkit.models.hub import check_state_dict, load_state_dict, save_state_dict

CKPT_DIR = "checkpoint"
LATEST = "latest.json"
STEP_DIR = re.compile(r"step_\d{8}_b\d{6}")  # the only entries checkpoint cleanup may remove


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(run_dir, model, ema, state: dict) -> Path:
    """Write weights (safetensors) + optimizer/scheduler/RNG/progress state, then publish."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{state['global_step']:08d}_b{state['batch_in_epoch']:06d}"
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), target / "model.safetensors", metadata={"format": "pt"})
    if ema is not None:
        save_state_dict(ema.module.state_dict(), target / "ema.safetensors", metadata={"format": "pt"})
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(target / "state.pt", buf.getvalue())
    files = {p.name: _sha256(p) for p in sorted(target.iterdir()) if not p.name.startswith(".")}
    manifest = {"dir": name, "files": files, "epoch": state["epoch"], "global_step": state["global_step"]}
    atomic_write_json(root / LATEST, manifest)
    for old in root.iterdir():  # keep only the published checkpoint; touch nothing but step dirs
        if old.name != name and STEP_DIR.fullmatch(old.name) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    return target


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / CKPT_DIR / LATEST).is_file()


def _verified_dir(run_dir) -> tuple[Path, dict]:
    root = Path(run_dir) / CKPT_DIR
    latest = root / LATEST
    if not latest.is_file():
        raise VitkitError(f"no checkpoint in {run_dir} ({latest} missing); start a new run without --resume")
    try:
        manifest = json.loads(latest.read_text())
        target, files = root / manifest["dir"], dict(manifest["files"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VitkitError(f"checkpoint index {latest} is corrupt ({exc}); delete the run dir and retrain") from None
    for fname, digest in files.items():
        path = target / fname
        if not path.is_file() or _sha256(path) != digest:
            raise VitkitError(
                f"checkpoint file {path} is missing, corrupt or truncated (checksum mismatch); "
                "nothing was loaded: delete the run dir and retrain"
            )
    return target, files


def load_checkpoint(run_dir, model, ema=None) -> dict:
    """Verify every file, then load weights (strictly) and return the saved state dict."""
    target, files = _verified_dir(run_dir)
    weights = load_state_dict(target / "model.safetensors")
    check_state_dict(model, weights, str(target))
    ema_weights = None
    if ema is not None:
        if "ema.safetensors" not in files:
            raise VitkitError(
                f"checkpoint {target} has no EMA weights but ema.enabled is on; resume with the run's config")
        ema_weights = load_state_dict(target / "ema.safetensors")
        check_state_dict(ema.module, ema_weights, str(target))
    try:
        state = torch.load(target / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise VitkitError(f"cannot read {target / 'state.pt'} ({exc}); the checkpoint is corrupt") from None
    model.load_state_dict(weights, strict=True)
    if ema_weights is not None:
        ema.module.load_state_dict(ema_weights, strict=True)
    return state
