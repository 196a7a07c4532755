"""Resumable checkpoints, written atomically and verified before anything is loaded.

    RUN_DIR/checkpoint/latest.json            {"dir": "step_000120_b000000", "files": {name: sha256}, ...}
    RUN_DIR/checkpoint/step_000120_b000000/   model.safetensors, ema.safetensors, state.pt
                                              (a sharded run: dcp/, written by every process through
                                              torch.distributed.checkpoint, instead of the weights)
                                              rng_rank1.pt ...: the RNG state of every other process

Every file goes to a fresh directory (temp file + rename); ``latest.json`` is replaced
last, so a kill at any moment leaves the previous checkpoint intact. On load every file
is checked against its SHA-256 first: a corrupt or truncated checkpoint is an error,
never half loaded.
"""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import warnings
from pathlib import Path

import torch

from vitkit.engine import distributed as D
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_bytes, atomic_write_json, read_json
from vitkit.models.hub import check_state_dict, load_state_dict, save_state_dict
from vitkit.registry import create_model

CKPT_DIR = "checkpoint"
LATEST = "latest.json"
STEP_DIR = re.compile(r"step_\d{8}_b\d{6}")  # the only entries checkpoint cleanup may remove
SHARDED_DIR = "dcp"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def _save_sharded(target: Path, model, optimizer) -> None:
    """Every process writes its shards of the weights and the optimizer state (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(target / SHARDED_DIR))


def save_checkpoint(run_dir, model, ema, state: dict, optimizer=None, info: D.DistInfo | None = None) -> Path:
    """Write weights + optimizer/scheduler/RNG/progress state, then publish (call on every process).

    ``model`` is the unwrapped module; ``state["rng"]`` is this process's RNG state. A sharded
    (FSDP) model and its optimizer go through ``torch.distributed.checkpoint``.
    """
    info = info or D.DistInfo()
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{state['global_step']:08d}_b{state['batch_in_epoch']:06d}"
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    sharded = D.is_sharded(model)
    if sharded:
        _save_sharded(target, model, optimizer)
    if info.is_main:
        if not sharded:
            save_state_dict(model.state_dict(), target / "model.safetensors", metadata={"format": "pt"})
            if ema is not None:
                save_state_dict(ema.module.state_dict(), target / "ema.safetensors", metadata={"format": "pt"})
            if optimizer is not None:
                state = {**state, "optimizer": optimizer.state_dict()}
        atomic_write_bytes(target / "state.pt", _torch_bytes(state))
    else:
        atomic_write_bytes(target / _rng_file(info.rank), _torch_bytes(state["rng"]))
    D.barrier(info)
    if info.is_main:
        _publish(root, target, state, sharded, info.world_size)
    D.barrier(info)
    return target


def _publish(root: Path, target: Path, state: dict, sharded: bool, world_size: int) -> None:
    files = {p.relative_to(target).as_posix(): _sha256(p) for p in sorted(target.rglob("*"))
             if p.is_file() and not p.name.endswith(".tmp")}
    manifest = {"dir": target.name, "files": files, "epoch": state["epoch"], "global_step": state["global_step"],
                "format": "sharded" if sharded else "full", "world_size": world_size}
    atomic_write_json(root / LATEST, manifest)
    for old in root.iterdir():  # keep only the published checkpoint; touch nothing but step dirs
        if old.name != target.name and STEP_DIR.fullmatch(old.name) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / CKPT_DIR / LATEST).is_file()


def _read_manifest(run_dir) -> tuple[Path, dict]:
    root = Path(run_dir) / CKPT_DIR
    latest = root / LATEST
    if not latest.is_file():
        raise VitkitError(f"no checkpoint in {run_dir} ({latest} missing); start a new run without --resume")
    manifest = read_json(latest, "checkpoint index", "delete the run dir and retrain")
    problem = _manifest_problem(manifest)
    if problem:
        raise VitkitError(f"checkpoint index {latest} is corrupt ({problem}); delete the run dir and retrain")
    return root / manifest["dir"], manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a latest.json (None if nothing): a step dir, a non-empty map of safe
    relative file names to SHA-256 digests, state.pt among them."""
    if not isinstance(manifest.get("dir"), str) or not STEP_DIR.fullmatch(manifest["dir"]):
        return f"'dir' must name a step_* folder, got {str(manifest.get('dir'))[:40]!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "'files' must map every checkpoint file to its SHA-256; it is empty or missing"
    for name, digest in files.items():
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            return f"file name {name[:40]!r} leaves the checkpoint folder"
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            return f"the SHA-256 of {name[:40]!r} is not 64 hex digits"
    if "state.pt" not in files:
        return "'files' does not list state.pt"
    return None


def _verify(target: Path, files: dict) -> None:
    for fname, digest in files.items():
        path = target / fname
        if not path.is_file() or _sha256(path) != digest:
            raise VitkitError(
                f"checkpoint file {path} is missing, corrupt or truncated (checksum mismatch); "
                "nothing was loaded: delete the run dir and retrain"
            )


def _verified_dir(run_dir, info: D.DistInfo | None = None) -> tuple[Path, dict]:
    """The checkpoint dir and its manifest, every file checked (by rank 0; all ranks agree)."""
    info = info or D.DistInfo()
    error = None
    if info.is_main:
        try:
            target, manifest = _read_manifest(run_dir)
            _verify(target, dict(manifest["files"]))
        except VitkitError as exc:
            error = exc
    if D.any_rank(error is not None, info):
        raise error or VitkitError(f"the checkpoint in {run_dir} failed verification on rank 0; see its message")
    return _read_manifest(run_dir)


def _load_state(path: Path):
    """``torch.load`` with ``weights_only=True``: a file that needs more than tensors and plain
    Python values to unpickle is refused (it was not written by vitkit), never loaded unsafely."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error says enough
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise VitkitError(f"cannot read {path}: {_unpickle_reason(exc)}; the checkpoint is corrupt or was not "
                          "written by vitkit: delete the run dir and retrain") from None


def _unpickle_reason(exc: Exception) -> str:
    """Why a safe load failed, in a few words (torch's own text suggests an unsafe retry: never echoed)."""
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
    if found:
        return f"it asks to run {found.group(1)}, which a safe load refuses"
    if "Weights only load failed" in str(exc):
        return "it holds objects a safe load refuses"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def _load_full(target: Path, files: dict, model, ema, optimizer, state: dict) -> None:
    if "model.safetensors" not in files:
        raise VitkitError(f"checkpoint {target} is sharded (parallel=fsdp); resume it with parallel=fsdp "
                          "under torchrun, or export it with `vitkit export RUN_DIR --format pretrained`")
    weights = load_state_dict(target / "model.safetensors")
    check_state_dict(model, weights, str(target))
    ema_weights = None
    if ema is not None:
        if "ema.safetensors" not in files:
            raise VitkitError(
                f"checkpoint {target} has no EMA weights but ema.enabled is on; resume with the run's config")
        ema_weights = load_state_dict(target / "ema.safetensors")
        check_state_dict(ema.module, ema_weights, str(target))
    model.load_state_dict(weights, strict=True)
    if ema_weights is not None:
        ema.module.load_state_dict(ema_weights, strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])


def _load_sharded(target: Path, model, optimizer) -> None:
    """Every process reads its shards of the weights and the optimizer state (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not D.is_sharded(model):
        raise VitkitError(f"checkpoint {target} is sharded (parallel=fsdp); resume it with parallel=fsdp "
                          "under torchrun, or export it with `vitkit export RUN_DIR --format pretrained`")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(target / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def load_checkpoint(run_dir, model, ema=None, optimizer=None, info: D.DistInfo | None = None) -> dict:
    """Verify every file, then load weights (strictly) and the optimizer; the saved state dict,
    with ``state["rng"]`` this process's RNG state (call on every process)."""
    info = info or D.DistInfo()
    target, manifest = _verified_dir(run_dir, info)
    files = dict(manifest["files"])
    state = _load_state(target / "state.pt")
    if manifest.get("format") == "sharded":
        _load_sharded(target, model, optimizer)
    else:
        _load_full(target, files, model, ema, optimizer, state)
    if not info.is_main and _rng_file(info.rank) in files:
        state["rng"] = _load_state(target / _rng_file(info.rank))
    state["saved_world_size"] = int(manifest.get("world_size", 1))
    return state


def export_pretrained(run_dir, out_dir) -> Path:
    """The checkpoint's (raw, not EMA) weights as a plain ``save_pretrained`` dir, in one process;
    sharded checkpoints included. Architecture, preprocessing and class names: the run's model."""
    target, manifest = _verified_dir(run_dir)
    model = create_model(Path(run_dir))
    model.load_state_dict(_full_weights(target, manifest, model), strict=True)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def _full_weights(target: Path, manifest: dict, model) -> dict:
    """All weights of ``model`` from a checkpoint dir, read without a process group."""
    if manifest.get("format") != "sharded":
        weights = load_state_dict(target / "model.safetensors")
        check_state_dict(model, weights, str(target))
        return weights
    import torch.distributed.checkpoint as dcp

    weights = {k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": weights}, checkpoint_id=str(target / SHARDED_DIR), no_dist=True)
    return weights
