"""PNG plots of a run: loss/accuracy curves, confusion matrix, segmentation examples."""
from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/val loss and accuracy (or mIoU) per epoch, side by side."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ev = [h for h in history if h.get("val_loss") is not None]
    ax_loss.plot([h["epoch"] for h in ev], [h["val_loss"] for h in ev], marker="o", label="val")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train acc")
    ax_acc.plot([h["epoch"] for h in ev], [h["val_metric"] for h in ev], marker="o", label="val (top-1 / mIoU)")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion(conf, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix with counts in the cells."""
    plt = _pyplot()
    conf = torch.as_tensor(conf, dtype=torch.float64)
    norm = conf / conf.sum(dim=1, keepdim=True).clamp(min=1)
    k = conf.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 1.0 + 0.5 * k))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    _save(fig, path)


def plot_segmentation(images, masks, preds, path: Path, num_classes: int) -> None:
    """Grid: one row per example with image (pixels in [0, 1]) / ground truth / prediction."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for row in range(n):
        img = images[row]  # (C, H, W)
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
        panels = ((img, "image", "gray"), (masks[row], "truth", "tab20"), (preds[row], "prediction", "tab20"))
        for col, (data, title, cmap) in enumerate(panels):
            ax = axes[row][col]
            kw = {} if title == "image" else {"vmin": 0, "vmax": max(num_classes - 1, 1), "interpolation": "nearest"}
            ax.imshow(data.numpy() if torch.is_tensor(data) else data, cmap=cmap, **kw)
            ax.set_title(title if row == 0 else "")
            ax.axis("off")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
