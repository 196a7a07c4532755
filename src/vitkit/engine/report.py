"""The end of a run: ``metrics.json`` and the PNG plots."""
from __future__ import annotations

import torch

from vitkit.engine.evaluate import dense_logits
from vitkit.engine.losses import split_outputs
from vitkit.engine.plots import plot_confusion, plot_curves, plot_segmentation
from vitkit.io import atomic_write_json


def write_report(run, metrics: dict) -> None:
    plots = run.run_dir / "plots"
    data = {"model": run.cfg.model, "data": run.cfg.data.name, "task": run.task,
            "epochs": run.cfg.epochs, "global_step": run.global_step, **metrics}
    atomic_write_json(run.run_dir / "metrics.json", data)
    if run.history:
        plot_curves(run.history, plots / "curves.png")
    names = list(run.bundle.class_names)
    plot_confusion(metrics["confusion"], names, plots / "confusion.png")
    if run.task == "segmentation":
        save_segmentation_examples(run.eval_model(), run.bundle, plots / "segmentation.png")


@torch.no_grad()
def save_segmentation_examples(model, bundle, path, n: int = 4) -> None:
    """Image / truth / prediction for the first ``n`` validation items."""
    items = [bundle.val[i] for i in range(min(n, len(bundle.val)))]
    images = torch.stack([x for x, _ in items])  # (n, C, H, W)
    masks = torch.stack([m for _, m in items])  # (n, H, W)
    was_training = model.training
    model.eval()
    logits, _ = split_outputs(model(images))
    model.train(was_training)
    preds = dense_logits(logits.float(), masks.shape[-2:]).argmax(dim=1)  # (n, H, W)
    plot_segmentation(bundle.preprocess.denormalize(images), masks, preds, path, bundle.num_classes)
