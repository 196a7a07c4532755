"""Per-item transforms (torchvision.transforms.v2 on tensors), normalisation stats, MixUp/CutMix.

Training augmentation: random crop with zero padding + horizontal flip ("basic", the CIFAR
recipe), optionally RandAugment (Cubuk et al. 2020). Batch-level MixUp (Zhang et al. 2018)
and CutMix (Yun et al. 2019) are a ``batch_transform`` applied by the trainer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

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


def _crop_flip(tensors: list[torch.Tensor], fills: list[int], pad: int, hflip: bool) -> list[torch.Tensor]:
    """Random crop with ``pad`` pixels of padding + horizontal flip, the same for every tensor.

    Every tensor is (..., H, W); one draw of (top, left, flip) is shared (image and mask stay aligned).
    """
    r = torch.rand(3).tolist()  # one RNG call: offsets and flip
    h, w = tensors[0].shape[-2:]
    top, left = int(r[0] * (2 * pad + 1)), int(r[1] * (2 * pad + 1))
    out = []
    for t, fill in zip(tensors, fills, strict=True):
        if pad > 0:
            t = F.pad(t, (pad, pad, pad, pad), value=fill)[..., top : top + h, left : left + w]
        if hflip and r[2] < 0.5:
            t = t.flip(-1)
        out.append(t)
    return out


def crop_flip_batch(images: torch.Tensor, pad: int, hflip: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): per-image random crop of the zero-padded image + horizontal
    flip, as :func:`_crop_flip` does per item, drawn in one RNG call for the whole batch."""
    b, _, h, w = images.shape
    r = torch.rand(b, 3)  # (B, 3): top, left, flip
    top, left = (r[:, 0] * (2 * pad + 1)).long(), (r[:, 1] * (2 * pad + 1)).long()
    rows = top[:, None] + torch.arange(h)  # (B, H) rows of the padded image
    cols = left[:, None] + torch.arange(w)  # (B, W)
    if hflip:
        cols = torch.where((r[:, 2] < 0.5)[:, None], cols.flip(-1), cols)
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class ClassificationTransform:
    """uint8 or 0..1 float image (C, h, w) -> normalised float (C, img_size, img_size).

    resize (if the image is not img_size) -> [train: crop with padding, flip, RandAugment] -> (x - mean) / std.
    Crop/flip/normalise are plain tensor ops: on 28x28 uint8 items about 3x cheaper than the
    same v2 modules in a Compose (``python -m vitkit.tools.bench`` prints both).
    """

    def __init__(self, cfg: DataConfig, img_size: int, mean, std, train: bool):
        self.size = [img_size, img_size]
        self.augment = cfg.augment if train else "none"
        self.pad, self.hflip = cfg.crop_padding, cfg.hflip
        self.randaugment = (v2.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude)
                            if self.augment == "randaugment" else None)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if list(image.shape[-2:]) != self.size:
            image = TF.resize(image, self.size, antialias=True)
        if self.augment != "none":
            (image,) = _crop_flip([image], [0], self.pad, self.hflip)
            if self.randaugment is not None:
                image = self.randaugment(image)
        return normalize(image, self.mean, self.std)

    def batch(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, C, h, w) -> normalised (B, C, img_size, img_size) in one go; None for RandAugment
        (per-image ops), so the caller goes item by item."""
        if self.randaugment is not None:
            return None
        if list(images.shape[-2:]) != self.size:
            images = TF.resize(images, self.size, antialias=True)
        if self.augment != "none":
            images = crop_flip_batch(images, self.pad, self.hflip)
        return normalize(images, self.mean, self.std)


def normalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) image -> float32 (x - mean) / std."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return (x - mean) / std


class SegmentationTransform:
    """(image (C, h, w), mask (h, w)) -> (normalised image, LongTensor mask); geometry shared.

    Resize: bilinear for the image, nearest for the mask. Padding fills the mask with ``IGNORE_INDEX``.
    """

    def __init__(self, cfg: DataConfig, img_size: int, mean, std, train: bool):
        if train and cfg.augment == "randaugment":
            raise VitkitError("augment=randaugment is for classification; use augment=basic or none for segmentation")
        self.size = [img_size, img_size]
        self.augment = cfg.augment if train else "none"
        self.pad, self.hflip = cfg.crop_padding, cfg.hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        mask = mask.long()
        if list(image.shape[-2:]) != self.size:
            image = TF.resize(image, self.size, antialias=True)
        if list(mask.shape[-2:]) != self.size:
            mask = TF.resize(mask[None], self.size, interpolation=v2.InterpolationMode.NEAREST)[0]
        if self.augment != "none":
            image, mask = _crop_flip([image, mask], [0, IGNORE_INDEX], self.pad, self.hflip)
        return normalize(image, self.mean, self.std), mask


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
