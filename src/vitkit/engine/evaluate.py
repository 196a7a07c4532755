"""Evaluation: top-1/top-5, per-class accuracy and confusion matrix; pixel accuracy and mIoU."""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from vitkit.engine.device import autocast, model_device, to_device
from vitkit.engine.distributed import DistInfo, ShardedBatches, all_reduce_, sharded_loader
from vitkit.engine.losses import split_outputs
from vitkit.engine.metrics import classification_summary, segmentation_summary, topk_hits, update_confusion
from vitkit.errors import VitkitError

TTA_MODES = ("none", "hflip", "shift", "flip-shift")


def eval_loader(dataset, batch_size: int, workers: int = 0, info: DistInfo | None = None) -> DataLoader:
    """In-order batches; under torchrun each process gets its share of them (no sample twice)."""
    return sharded_loader(dataset, batch_size, info, workers)


def dense_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Upsample segmentation logits (B, K, h, w) to the mask size (B, K, H, W) if needed."""
    if logits.shape[-2:] != tuple(size):
        logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def _batch_metrics(logits, target, task, conf, counts, ignore_index) -> torch.Tensor:
    """Update the confusion matrix and ``counts`` (top-5 hits, images); the batch's summed loss."""
    counts[1] += len(target)
    if task == "segmentation":
        logits = dense_logits(logits, target.shape[-2:])
        update_confusion(conf, logits.argmax(dim=1), target, ignore_index)
        mean = torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index)
        return mean.double() * len(target) if mean.device.type != "mps" else mean * len(target)
    counts[0] += topk_hits(logits, target, (5,))[5]
    update_confusion(conf, logits.argmax(dim=-1), target)
    return torch.nn.functional.cross_entropy(logits, target, reduction="sum")


def check_tta(tta: str, task: str = "classification") -> None:
    if tta not in TTA_MODES:
        raise VitkitError(f"unknown test-time augmentation '{tta}'; choose one of {', '.join(TTA_MODES)}")
    if _tta_parts(tta)[1] and task != "classification":
        raise VitkitError(f"test-time augmentation '{tta}' is for classification, not {task}; use hflip")


def _tta_parts(tta: str) -> tuple[bool, bool]:
    """Whether a test-time augmentation mode adds the mirror image, and whether it adds shifts."""
    return tta in ("hflip", "flip-shift"), tta in ("shift", "flip-shift")


def tta_views(tta: str) -> int:
    """Forward passes per batch of a test-time augmentation mode."""
    mirror, shift = _tta_parts(tta)
    return (2 if mirror else 1) * (5 if shift else 1)


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``images`` (B, C, H, W) moved right by ``dx`` and down by ``dy`` pixels (negative: left, up),
    the uncovered border filled with copies of the edge pixels. Same shape."""
    if dx == 0 and dy == 0:
        return images
    h, w = images.shape[-2:]
    pad = max(abs(dx), abs(dy))
    padded = torch.nn.functional.pad(images, (pad,) * 4, mode="replicate")  # (B, C, H + 2p, W + 2p)
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def _shift_step(images: torch.Tensor) -> int:
    """The shift / flip-shift offset: 1/28 of the shorter side, at least 1 pixel (1 px at 28 px, 8 px at 224 px)."""
    return max(1, round(min(images.shape[-2:]) / 28))


def eval_logits(model, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's fp32 logits (B, K) or (B, K, h, w); ``tta="hflip"``: the log of the mean class
    probabilities of each image and its mirror image, log((p(x) + p(flip(x))) / 2), with dense
    outputs of the mirror image mirrored back; ``tta="shift"`` (classification): the same mean over
    5 views, the image as it is and moved by one step (:func:`_shift_step`) left, right, up and down;
    ``tta="flip-shift"``: over 10 views, those of the image and of its mirror image. Either way the
    argmax is the prediction and cross-entropy on the result is the loss."""
    if tta == "none":
        return split_outputs(model(images))[0].float()
    mirror, shift = _tta_parts(tta)
    s = _shift_step(images) if shift else 0
    moves = ((0, 0), (s, 0), (-s, 0), (0, s), (0, -s)) if shift else ((0, 0),)
    outputs = []  # tta_views(tta) x (B, K) or (B, K, h, w)
    for flipped in (False, True) if mirror else (False,):
        base = images.flip(-1) if flipped else images
        for dx, dy in moves:
            out = split_outputs(model(shifted(base, dx, dy)))[0].float()
            outputs.append(out.flip(-1) if flipped and out.dim() == 4 else out)  # dense: mirrored back
    dense = outputs[0].dim() == 4
    if dense and shift:
        check_tta(tta, "segmentation")
    log_probs = torch.stack([t.log_softmax(1 if dense else -1) for t in outputs])  # (V, B, K, ...)
    return torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))


def _lockstep(model, loader, done: int, device, precision: str, passes: int = 1) -> None:
    """Extra forward passes (results unused) so that every rank runs ``rounds`` x ``passes`` of
    them: a sharded model gathers its weights collectively, in every forward pass of every rank."""
    sampler = loader.batch_sampler
    if not isinstance(sampler, ShardedBatches) or done >= sampler.rounds:
        return
    images = to_device(loader.dataset[0][0][None], device)  # (1, C, H, W)
    for _ in range((sampler.rounds - done) * passes):
        with autocast(precision, device):
            model(images)


@torch.no_grad()
def evaluate(model, loader, task: str, num_classes: int, ignore_index: int = 255, precision: str = "fp32",
             info: DistInfo | None = None, lockstep: bool = False, tta: str = "none") -> dict:
    """Metrics of ``model`` over ``loader`` plus the confusion matrix (rows = truth).

    ``tta="hflip"``: test-time augmentation, each image predicted from the mean class
    probabilities of it and its mirror image (:func:`eval_logits`; two forward passes);
    ``"shift"``: over the image and it moved in 4 directions (5 passes); ``"flip-shift"``: the same
    for the image and its mirror image (10 passes).

    Counts stay on the model's device. Under torchrun (``info``, a loader from
    :func:`eval_loader`) every rank evaluates its batches and the counts are summed; per-batch
    losses are summed in batch order, so the result equals a one-process evaluation exactly.
    ``lockstep``: ranks with fewer batches run empty rounds (needed for a sharded model).
    """
    check_tta(tta, task)
    info = info or DistInfo()
    device = model_device(model)
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    counts = torch.zeros(2, dtype=torch.long, device=device)  # top-5 hits, images
    losses = []
    for images, target in loader:
        images, target = to_device(images, device), to_device(target, device)
        with autocast(precision, device):
            logits = eval_logits(model, images, tta)
        losses.append(_batch_metrics(logits, target, task, conf, counts, ignore_index))
    if lockstep:
        _lockstep(model, loader, len(losses), device, precision, passes=tta_views(tta))
    model.train(was_training)
    per_batch = _per_batch_losses(losses, loader, device)
    all_reduce_([conf, counts, per_batch], info)
    top5, n = counts.tolist()
    out = segmentation_summary(conf) if task == "segmentation" else classification_summary(conf, top5, n)
    out["loss"] = sum(per_batch.tolist()) / max(1, n)
    out["confusion"] = conf.tolist()
    return out


def _per_batch_losses(losses: list, loader, device) -> torch.Tensor:
    """This rank's batch losses at their global batch positions (zeros elsewhere)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, ShardedBatches):
        return torch.stack(losses).to(dtype) if losses else torch.zeros(0, dtype=dtype, device=device)
    out = torch.zeros(sampler.num_batches, dtype=dtype, device=device)
    if losses:
        out[sampler.rank::sampler.world_size] = torch.stack(losses).to(dtype)
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
