"""Per-item transforms (torchvision.transforms.v2 on tensors), normalisation stats, MixUp/CutMix.

Training augmentation: random crop with zero padding + horizontal flip ("basic", the CIFAR
recipe), optionally RandAugment (Cubuk et al. 2020), then random erasing (Zhong et al. 2020) on
the normalised image. Batch-level MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) are a
``batch_transform`` applied by the trainer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitkit.data.config import AUGMENTS, IGNORE_INDEX, DataConfig
from vitkit.errors import VitkitError
from vitkit.preprocess import INTERPOLATIONS, Preprocess

MIN_STD = 1e-4  # statistics are rounded to 4 decimals; a constant channel keeps std > 0


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
        stds.append(max(round(float(var.clamp_min(0).sqrt()), 4), MIN_STD))
    return tuple(means), tuple(stds)


def float_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of float images (N, C, H, W) in 0..1."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()  # (C, N*H*W)
    mean, std = flat.mean(1), flat.std(1)
    return tuple(round(float(m), 4) for m in mean), tuple(max(round(float(s), 4), MIN_STD) for s in std)


def check_augment(cfg: DataConfig) -> None:
    """Reject unknown augmentation names and negative settings with a clear message."""
    if cfg.augment not in AUGMENTS:
        raise VitkitError(f"unknown augment '{cfg.augment}'; choose one of {', '.join(AUGMENTS)}")
    if cfg.crop_padding < 0 or cfg.mixup_alpha < 0 or cfg.cutmix_alpha < 0:
        raise VitkitError("crop_padding, mixup_alpha and cutmix_alpha must be >= 0")
    low, high = cfg.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise VitkitError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {cfg.crop_scale}")


def data_preprocess(measured: Preprocess, base: Preprocess | None, crop_pct: float | None = 1.0) -> Preprocess:
    """The preprocessing a data set uses: ``base`` (the initial weights') at the data's size and
    channels, else ``measured``; then ``crop_pct`` (None keeps ``base``'s crop fraction)."""
    pre = measured if base is None else base.adapted(measured.img_size, measured.in_chans)
    return pre if crop_pct is None else pre.adapted(crop_pct=crop_pct)


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


ERASE_AREA = (0.02, 1 / 3)  # random erasing: rectangle area as a fraction of the image (Zhong et al.)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))  # log of the height/width range


def random_erase_batch(images: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) normalised -> (B, C, H, W): with probability ``p`` per image, one rectangle of
    area ``ERASE_AREA`` and aspect ``ERASE_LOG_ASPECT`` (clamped to the image) becomes N(0, 1) noise,
    per pixel and channel (Random Erasing, Zhong et al. 2020; timm's "pixel" mode). One draw for the batch:
    torchvision's ``v2.RandomErasing`` erases the same rectangle in every image of a batch tensor."""
    b, _, h, w = images.shape
    r = torch.rand(b, 5)  # (B, 5): apply, area, aspect, top, left
    area = h * w * (ERASE_AREA[0] + r[:, 1] * (ERASE_AREA[1] - ERASE_AREA[0]))
    aspect = torch.exp(ERASE_LOG_ASPECT[0] + r[:, 2] * (ERASE_LOG_ASPECT[1] - ERASE_LOG_ASPECT[0]))
    eh = (area * aspect).sqrt().round().clamp(1, h).long()  # (B,) rectangle height
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    top, left = (r[:, 3] * (h - eh + 1)).long(), (r[:, 4] * (w - ew + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (((rows >= top[:, None]) & (rows < (top + eh)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + ew)[:, None]))[:, None, :])  # (B, H, W)
    erase = (inside & (r[:, 0] < p)[:, None, None])[:, None]  # (B, 1, H, W)
    return torch.where(erase, torch.randn_like(images), images)


class ClassificationTransform:
    """uint8 or 0..1 float image (C, h, w) -> normalised float (C, H, W) at ``pre.img_size``.

    In-memory sets: ``pre.resize`` -> [train: crop with padding, flip, RandAugment] -> normalise.
    Folders (``resized_crop``): train = RandomResizedCrop (area ``crop_scale``, aspect 3/4..4/3)
    -> flip -> [RandAugment] -> normalise; eval = ``pre.resize`` (shorter side to
    size / crop_pct, center crop) -> normalise. Training ends with random erasing when
    ``cfg.random_erasing`` > 0.
    Crop/flip/normalise are plain tensor ops: on 28x28 uint8 items about 3x cheaper than the
    same v2 modules in a Compose (``python -m vitkit.tools.bench`` prints both).
    """

    def __init__(self, cfg: DataConfig, pre: Preprocess, train: bool, resized_crop: bool = False):
        self.pre = pre
        self.augment = cfg.augment if train else "none"
        self.pad, self.hflip = cfg.crop_padding, cfg.hflip
        self.erase_p = cfg.random_erasing if train else 0.0
        self.randaugment = (v2.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude)
                            if self.augment == "randaugment" else None)
        self.resized_crop = (v2.RandomResizedCrop(list(pre.img_size), scale=tuple(cfg.crop_scale),
                                                  interpolation=INTERPOLATIONS[pre.interpolation], antialias=True)
                             if resized_crop and self.augment != "none" else None)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.resized_crop is not None:
            image = self.resized_crop(image)
            if self.hflip and torch.rand(()) < 0.5:
                image = image.flip(-1)
        else:
            image = self.pre.resize(image)
            if self.augment != "none":
                (image,) = _crop_flip([image], [0], self.pad, self.hflip)
        if self.randaugment is not None:
            image = self.randaugment(image)
        image = self.pre.normalize(image)
        return random_erase_batch(image[None], self.erase_p)[0] if self.erase_p > 0 else image

    def batch(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, C, h, w) -> normalised (B, C, H, W) in one go; None for per-image ops (RandAugment,
        random resized crops), so the caller goes item by item."""
        if self.randaugment is not None or self.resized_crop is not None:
            return None
        images = self.pre.resize(images)
        if self.augment != "none":
            images = crop_flip_batch(images, self.pad, self.hflip)
        images = self.pre.normalize(images)
        return random_erase_batch(images, self.erase_p) if self.erase_p > 0 else images


class SegmentationTransform:
    """(image (C, h, w), mask (h, w)) -> (normalised image, LongTensor mask); geometry shared.

    Resize: ``pre.interpolation`` for the image, nearest for the mask. Padding fills the mask
    with ``IGNORE_INDEX``.
    """

    def __init__(self, cfg: DataConfig, pre: Preprocess, train: bool):
        if train and cfg.augment == "randaugment":
            raise VitkitError("augment=randaugment is for classification; use augment=basic or none for segmentation")
        if train and cfg.random_erasing > 0:
            raise VitkitError("random_erasing is for classification; set data.random_erasing=0 for segmentation")
        self.pre = pre
        self.augment = cfg.augment if train else "none"
        self.pad, self.hflip = cfg.crop_padding, cfg.hflip

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        image = self.pre.resize(image)
        mask = self.pre.resize(mask.long()[None], interpolation="nearest")[0]
        if self.augment != "none":
            image, mask = _crop_flip([image, mask], [0, IGNORE_INDEX], self.pad, self.hflip)
        return self.pre.normalize(image), mask


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
