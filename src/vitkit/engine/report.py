"""The end of a run: ``metrics.json``, the PNG plots and the model card of ``RUN_DIR/model``."""
from __future__ import annotations

from pathlib import Path

import torch

from vitkit.engine.device import model_device
from vitkit.engine.evaluate import dense_logits
from vitkit.engine.losses import split_outputs
from vitkit.engine.plots import plot_confusion, plot_curves, plot_segmentation
from vitkit.io import atomic_write_json, atomic_write_text, read_json
from vitkit.models.card import CARD_NAME, model_card


def write_report(run, metrics: dict, examples=None) -> None:
    """metrics.json, learning curves, confusion matrix; ``examples`` from :func:`segmentation_examples`."""
    plots = run.run_dir / "plots"
    data = {"model": run.cfg.model_name, "data": run.cfg.data.name, "task": run.task,
            "epochs": run.cfg.epochs, "global_step": run.global_step, **metrics}
    if run.command:
        data["command"] = run.command
    atomic_write_json(run.run_dir / "metrics.json", data)
    write_run_card(run.run_dir)
    if run.history:
        plot_curves(run.history, plots / "curves.png")
    names = list(run.bundle.class_names)
    plot_confusion(metrics["confusion"], names, plots / "confusion.png")
    if examples is not None:
        images, masks, preds = examples
        plot_segmentation(run.bundle.preprocess.denormalize(images), masks, preds, plots / "segmentation.png",
                          run.bundle.num_classes)


@torch.no_grad()
def segmentation_examples(model, bundle, n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, truth, prediction) on the CPU for the first ``n`` validation items. A sharded model
    runs its forward pass on every process: call this on all of them."""
    items = [bundle.val[i] for i in range(min(n, len(bundle.val)))]
    images = torch.stack([x for x, _ in items])  # (n, C, H, W)
    masks = torch.stack([m for _, m in items])  # (n, H, W)
    device = model_device(model)
    was_training = model.training
    model.eval()
    logits, _ = split_outputs(model(images.to(device)))
    model.train(was_training)
    preds = dense_logits(logits.float(), masks.shape[-2:]).argmax(dim=1).cpu()  # (n, H, W)
    return images, masks, preds


def _read(path: Path, what: str) -> dict:
    return read_json(path, what, "the run dir is damaged: retrain, or push a save_pretrained dir") if path.is_file() \
        else {}


def write_run_card(run_dir, repo_id: str | None = None) -> Path:
    """``RUN_DIR/model/README.md``: the model card with the run's data set, metrics and command."""
    run_dir = Path(run_dir)
    meta = _read(run_dir / "model" / "config.json", "model config")
    config, metrics = _read(run_dir / "config.json", "run config"), _read(run_dir / "metrics.json", "metrics")
    run = {"data": config.get("data"), "metrics": metrics, "epochs": metrics.get("epochs", config.get("epochs")),
           "command": metrics.get("command")}
    path = run_dir / "model" / CARD_NAME
    atomic_write_text(path, model_card(meta, repo_id or run_dir.resolve().name, repo_id, run))
    return path
