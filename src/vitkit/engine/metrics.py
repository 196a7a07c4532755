"""Classification and segmentation metrics from a confusion matrix."""
from __future__ import annotations

import torch


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[int, torch.Tensor]:
    """Samples whose label is among the top-k logits, for each k (k capped at classes), as
    0-dim tensors on the logits' device (no host sync)."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices  # (B, kmax)
    hit = top.eq(target[:, None])  # (B, kmax)
    return {k: hit[:, :min(k, kmax)].any(dim=-1).sum() for k in ks}


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at classes)."""
    return {k: int(v) for k, v in topk_hits(logits, target, ks).items()}


def update_confusion(conf: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> None:
    """conf[t, p] += count; pixels/samples with target == ignore_index are skipped."""
    k = conf.shape[0]
    pred, target = pred.reshape(-1), target.reshape(-1)
    keep = (target != ignore_index) & (target >= 0) & (target < k)
    idx = target[keep] * k + pred[keep]
    conf += torch.bincount(idx, minlength=k * k).reshape(k, k)


def classification_summary(conf: torch.Tensor, top5: int, n: int) -> dict:
    """top-1/top-5 accuracy and per-class accuracy (recall) from a confusion matrix."""
    conf = conf.cpu()
    per_class = conf.diag().double() / conf.sum(dim=1).clamp(min=1).double()
    return {"top1": float(conf.diag().sum()) / max(1, n), "top5": top5 / max(1, n),
            "per_class_acc": per_class.tolist(), "n": n}


def segmentation_summary(conf: torch.Tensor) -> dict:
    """Pixel accuracy and mean IoU = mean_k TP_k / (TP_k + FP_k + FN_k) over classes present."""
    conf = conf.cpu()
    tp = conf.diag().double()
    union = conf.sum(dim=0).double() + conf.sum(dim=1).double() - tp
    iou = tp / union.clamp(min=1)
    present = union > 0
    return {"pixel_acc": float(tp.sum() / conf.sum().clamp(min=1)),
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "per_class_iou": iou.tolist(), "n_pixels": int(conf.sum())}
