"""Evaluation: top-1/top-5, per-class accuracy and confusion matrix; pixel accuracy and mIoU."""
from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader

from vitkit.data.datasets import collate
from vitkit.engine.losses import split_outputs
from vitkit.engine.metrics import classification_summary, segmentation_summary, topk_correct, update_confusion


def autocast(precision: str):
    """bf16 autocast on CPU, or nothing."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_loader(dataset, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def dense_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Upsample segmentation logits (B, K, h, w) to the mask size (B, K, H, W) if needed."""
    if logits.shape[-2:] != tuple(size):
        logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(model, loader, task: str, num_classes: int, ignore_index: int = 255,
             precision: str = "fp32") -> dict:
    """Metrics of ``model`` over ``loader`` plus the confusion matrix (rows = truth)."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5 = n = 0
    loss_sum = 0.0
    for images, target in loader:
        with autocast(precision):
            logits, _ = split_outputs(model(images))
        logits = logits.float()
        if task == "segmentation":
            logits = dense_logits(logits, target.shape[-2:])
            loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index)
            loss_sum += float(loss) * len(images)
            update_confusion(conf, logits.argmax(dim=1), target, ignore_index)
        else:
            loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            top5 += topk_correct(logits, target, (5,))[5]
            update_confusion(conf, logits.argmax(dim=-1), target)
        n += len(images)
    model.train(was_training)
    out = segmentation_summary(conf) if task == "segmentation" else classification_summary(conf, top5, n)
    out["loss"] = loss_sum / max(1, n)
    out["confusion"] = conf.tolist()
    return out


def headline(metrics: dict) -> float:
    """The one number a run is judged by: top-1 accuracy or mIoU."""
    return metrics["miou"] if "miou" in metrics else metrics["top1"]


def format_report(metrics: dict, class_names: list[str]) -> str:
    """A plain-text report: headline metrics, per-class numbers, the confusion matrix."""
    lines = []
    if "miou" in metrics:
        lines.append(
            f"pixel accuracy {metrics['pixel_acc']:.4f}   mIoU {metrics['miou']:.4f}   loss {metrics['loss']:.4f}")
        per, label = metrics["per_class_iou"], "IoU"
    else:
        lines.append(f"top-1 {metrics['top1']:.4f}   top-5 {metrics['top5']:.4f}   loss {metrics['loss']:.4f}   "
                     f"({metrics['n']} images)")
        per, label = metrics["per_class_acc"], "accuracy"
    width = max(len(c) for c in class_names) if class_names else 5
    lines.append(f"per-class {label}:")
    lines += [f"  {name:<{width}}  {value:.4f}" for name, value in zip(class_names, per, strict=True)]
    lines.append("confusion matrix (rows = truth, columns = prediction):")
    conf = metrics["confusion"]
    cell = max(5, len(str(max(max(r) for r in conf))) + 1)
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(conf))))
    lines += [f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row)
              for name, row in zip(class_names, conf, strict=True)]
    return "\n".join(lines)
