"""The end of a run: ``metrics.json`` and the PNG plots."""
from __future__ import annotations

import torch

from vitkit.engine.device import model_device
from vitkit.engine.evaluate import dense_logits
from vitkit.engine.losses import split_outputs
from vitkit.engine.plots import plot_confusion, plot_curves, plot_segmentation
from vitkit.io import atomic_write_json


def write_report(run, metrics: dict, examples=None) -> None:
    """metrics.json, learning curves, confusion matrix; ``examples`` from :func:`segmentation_examples`."""
    plots = run.run_dir / "plots"
    data = {"model": run.cfg.model_name, "data": run.cfg.data.name, "task": run.task,
            "epochs": run.cfg.epochs, "global_step": run.global_step, **metrics}
    atomic_write_json(run.run_dir / "metrics.json", data)
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
