"""Top-k predictions for image files with a saved model (per-file errors, never all-or-nothing)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vitkit.engine.device import model_device
from vitkit.engine.losses import split_outputs
from vitkit.errors import VitkitError, printable
from vitkit.preprocess import Preprocess


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probs: list[float]


@dataclass
class Failure:
    path: str
    error: str


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[Failure]]:
    """Files for every image / folder / glob in ``specs``; a spec that matches nothing is a failure."""
    from vitkit.data import list_image_files

    files, failures = [], []
    for spec in specs:
        try:
            files += list_image_files(spec)
        except VitkitError as exc:
            failures.append(Failure(spec, str(exc)))
    return files, failures


@torch.no_grad()
def class_probs(model, images: torch.Tensor, task: str) -> torch.Tensor:
    """(B, K) probabilities; for segmentation the share of pixels predicted as each class."""
    logits, _ = split_outputs(model(images))
    if task == "segmentation" or logits.ndim == 4:
        pred = logits.argmax(dim=1)  # (B, H, W)
        k = logits.shape[1]
        return torch.stack([torch.bincount(p.reshape(-1), minlength=k).float() / p.numel() for p in pred])
    return logits.float().softmax(dim=-1)


def predict_files(model, files: list[Path], top_k: int = 5,
                  batch_size: int = 64) -> tuple[list[Prediction], list[Failure]]:
    """Load each batch of files as ``model.preprocess`` says (errors collected per file), run
    the model, keep the top-k of ``model.class_names``."""
    if batch_size < 1:
        raise VitkitError(f"batch size must be >= 1, got {batch_size}")
    model.eval()
    device = model_device(model)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    results, failures = [], []
    for start in range(0, len(files), batch_size):
        loaded = _load_batch(files[start:start + batch_size], model.preprocess, failures)
        if not loaded:
            continue
        probs = class_probs(model, torch.stack([x for _, x in loaded]).to(device), model.task).cpu()  # (B, K)
        top = probs.topk(min(top_k, len(names), probs.shape[-1]), dim=-1)
        for (path, _), p, i in zip(loaded, top.values, top.indices, strict=True):
            if not torch.isfinite(p).all():
                failures.append(Failure(str(path), f"{path}: the model output is NaN or inf for this image; "
                                                   "check the model's weights and preprocess metadata"))
                continue
            results.append(Prediction(str(path), [names[j] for j in i.tolist()], p.tolist()))
    return results, failures


def _load_batch(paths: list[Path], pre: Preprocess, failures: list[Failure]) -> list[tuple[Path, torch.Tensor]]:
    from vitkit.data import load_image

    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_image(path, pre)))
        except (VitkitError, OSError) as exc:
            failures.append(Failure(str(path), str(exc)))
    return loaded


def format_predictions(results: list[Prediction], fmt: str) -> str:
    """table | csv | json."""
    import csv
    import io
    import json

    if fmt == "json":
        return json.dumps([{"path": r.path, "top": [{"label": label, "prob": round(p, 6)}
                                                    for label, p in zip(r.labels, r.probs, strict=True)]}
                           for r in results], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "rank", "label", "prob"])
        for r in results:
            for rank, (label, p) in enumerate(zip(r.labels, r.probs, strict=True), 1):
                w.writerow([r.path, rank, label, f"{p:.6f}"])
        return buf.getvalue().rstrip("\n")
    paths = [printable(r.path) for r in results]
    width = max([len(p) for p in paths] + [4])
    lines = [f"{'path':<{width}}  top predictions (probability)"]
    for r, path in zip(results, paths, strict=True):
        tops = "  ".join(f"{printable(label)} {p:.3f}" for label, p in zip(r.labels, r.probs, strict=True))
        lines.append(f"{path:<{width}}  {tops}")
    return "\n".join(lines)
