"""Per-item transforms (torchvision.transforms.v2 on tensors), normalisation stats, MixUp/CutMix.

Training augmentation: random crop with zero padding + horizontal flip ("basic", the CIFAR
recipe), optionally RandAugment (Cubuk et al. 2020). Batch-level MixUp (Zhang et al. 2018)
and CutMix (Yun et al. 2019) are a ``batch_transform`` applied by the trainer.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vitkit.data.config import AUGMENTS, IGNORE_INDEX, DataConfig
from vitkit.errors import VitkitError


def uint8_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (0..1 scale) of uint8 images (N, C, H, W) via a histogram."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * values**2).sum() / n - mean**2
        means.append(round(float(mean), 4))
        stds.append(round(float(var.clamp_min(1e-12).sqrt()), 4))
    return tuple(means), tuple(stds)


def float_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of float images (N, C, H, W) in 0..1."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()  # (C, N*H*W)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-6)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def check_augment(cfg: DataConfig) -> None:
    """Reject unknown augmentation names and negative settings with a clear message."""
    if cfg.augment not in AUGMENTS:
        raise VitkitError(f"unknown augment '{cfg.augment}'; choose one of {', '.join(AUGMENTS)}")
    if cfg.crop_padding < 0 or cfg.mixup_alpha < 0 or cfg.cutmix_alpha < 0:
        raise VitkitError("crop_padding, mixup_alpha and cutmix_alpha must be >= 0")


def classification_transform(cfg: DataConfig, native: int | None, img_size: int, mean, std, train: bool):
    """uint8 or 0..1 float image (C, h, w) -> normalised float (C, img_size, img_size)."""
    ops: list = []
    if native != img_size:  # resize first, so crop padding is in output pixels
        ops.append(v2.Resize((img_size, img_size), antialias=True))
    if train and cfg.augment != "none":
        if cfg.crop_padding > 0:
            ops.append(v2.RandomCrop(img_size, padding=cfg.crop_padding))
        if cfg.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if cfg.augment == "randaugment":
            ops.append(v2.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class SegmentationTransform:
    """(image (C, h, w), mask (h, w)) -> (normalised image, LongTensor mask), geometry shared."""

    def __init__(self, cfg: DataConfig, native: int | None, img_size: int, mean, std, train: bool):
        if train and cfg.augment == "randaugment":
            raise VitkitError("augment=randaugment is for classification; use augment=basic or none for segmentation")
        ops: list = []
        if native != img_size:
            ops.append(v2.Resize((img_size, img_size), antialias=True))  # masks: nearest
        if train and cfg.augment == "basic":
            if cfg.crop_padding > 0:
                fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
                ops.append(v2.RandomCrop(img_size, padding=cfg.crop_padding, fill=fill))
            if cfg.hflip:
                ops.append(v2.RandomHorizontalFlip())
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.ops = v2.Compose(ops)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        image, mask = self.ops(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class BatchMix:
    """MixUp / CutMix on a batch: (images (B, C, H, W), labels (B,)) -> (images, soft (B, K))."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int):
        mixes = []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        return self.mix(images, labels.long())

    def __repr__(self) -> str:
        return f"BatchMix({self.mix!r})"


def build_batch_transform(cfg: DataConfig, task: str, num_classes: int) -> BatchMix | None:
    """The MixUp/CutMix ``batch_transform`` for ``cfg``, or None when both alphas are 0."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    if task != "classification":
        raise VitkitError("mixup_alpha/cutmix_alpha apply to classification only; set them to 0 for segmentation")
    return BatchMix(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes)
