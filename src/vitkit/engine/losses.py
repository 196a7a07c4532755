"""Training losses: (soft-target) cross-entropy, pixel CE, and DeiT distillation.

Distillation lives here, not in the model: a distilled ViT returns
``DistilledOutput(logits, dist_logits)`` while training, and the loss is

    L = (1 - alpha) * CE(logits, y) + alpha * L_teacher(dist_logits, teacher(x))   (DeiT eq. 2-3)

with L_teacher = CE(dist_logits, argmax teacher) (hard) or
tau^2 * KL(softmax(teacher / tau) || softmax(dist_logits / tau)) (soft).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitkit.errors import VitkitError


def split_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(class logits, distillation logits or None) from any model output."""
    if hasattr(out, "dist_logits"):
        return out.logits, out.dist_logits
    if isinstance(out, torch.Tensor):
        return out, None
    raise VitkitError(f"the model returned {type(out).__name__}; the trainer needs logits or DistilledOutput")


def classification_ce(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """CE with hard labels (B,) or soft targets (B, K) from MixUp/CutMix; label smoothing on top."""
    logits = logits.float()
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    k = logits.shape[-1]
    soft = target.float() * (1 - smoothing) + smoothing / k  # (B, K)
    return torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()


def segmentation_ce(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int, smoothing: float) -> torch.Tensor:
    """Per-pixel CE: logits (B, K, H, W), mask (B, H, W); ``ignore_index`` pixels skipped."""
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), mask, ignore_index=ignore_index, label_smoothing=smoothing)


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Hard: CE against the teacher's argmax. Soft: tau^2 * KL at temperature tau (Hinton et al.)."""
    student, teacher = student.float(), teacher.float()
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    log_p = F.log_softmax(student / tau, dim=-1)
    log_q = F.log_softmax(teacher / tau, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * tau * tau


class TrainLoss:
    """Callable ``(outputs, targets, images) -> loss`` for one task, optionally with a teacher."""

    def __init__(self, task: str, smoothing: float = 0.0, ignore_index: int = 255,
                 teacher: torch.nn.Module | None = None, alpha: float = 0.5, tau: float = 1.0,
                 kind: str = "hard"):
        self.task, self.smoothing, self.ignore_index = task, smoothing, ignore_index
        self.teacher, self.alpha, self.tau, self.kind = teacher, alpha, tau, kind

    def base(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "segmentation":
            return segmentation_ce(logits, target, self.ignore_index, self.smoothing)
        return classification_ce(logits, target, self.smoothing)

    def __call__(self, outputs, target: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        logits, dist_logits = split_outputs(outputs)
        loss = self.base(logits, target)
        if self.teacher is None:
            if dist_logits is not None:  # distilled model without a teacher: train both heads on labels
                loss = (loss + self.base(dist_logits, target)) / 2
            return loss
        with torch.no_grad():
            teacher_logits, _ = split_outputs(self.teacher(images))
        student = dist_logits if dist_logits is not None else logits
        return (1 - self.alpha) * loss + self.alpha * distillation_term(student, teacher_logits, self.kind, self.tau)


def build_loss(task: str, smoothing: float, ignore_index: int, teacher=None, distill=None) -> Callable:
    if teacher is not None and task != "classification":
        raise VitkitError("distillation needs a classification task; unset distill.teacher for segmentation")
    kw = dict(alpha=distill.alpha, tau=distill.tau, kind=distill.kind) if distill is not None else {}
    return TrainLoss(task, smoothing, ignore_index, teacher, **kw)
