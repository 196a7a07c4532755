"""How an image becomes a model input: one frozen object that travels with the weights.

    x = (resize(image) - mean) / std          # (C, H, W) float32, pixels scaled to 0..1

``resize`` is the evaluation convention of timm and torchvision: scale the image (with
``interpolation``, antialiased) so that its shorter side is ``size / crop_pct``, keeping the
aspect ratio, then center-crop ``img_size`` (a non-square ``img_size`` is scaled to
``img_size / crop_pct`` exactly). A square image at ``crop_pct = 1`` is a plain resize.
``save_pretrained`` stores the object in ``config.json`` under ``preprocess``; training
(the data sets' transforms), predict, explain, export and bench all read it from there, and
the converters fill it from timm's ``pretrained_cfg`` or a transformers image processor.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vitkit.errors import VitkitError

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}
DEFAULT_MEAN = DEFAULT_STD = 0.5  # for a model saved without statistics: [0, 1] -> [-1, 1]


def _size(value) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == int(v) >= 1
                                 for v in pair):
        raise VitkitError(f"img_size must be a positive int or a pair (H, W), got {value!r}")
    return int(pair[0]), int(pair[1])


def _per_channel(values, in_chans: int, name: str) -> tuple[float, ...]:
    vals = tuple(float(v) for v in (values if isinstance(values, (tuple, list)) else [values]))
    if len(vals) not in (1, in_chans):
        raise VitkitError(f"{name} has {len(vals)} values but the model expects {in_chans} channels; "
                          f"give 1 or {in_chans} values")
    return vals * in_chans if len(vals) == 1 else vals


@dataclass(frozen=True)
class Preprocess:
    """Input size, channels, normalisation statistics, interpolation and crop fraction.

    ``mean``/``std`` are per channel on the 0..1 pixel scale (one value is repeated for
    every channel); ``img_size`` is normalised to (H, W).
    """

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...] = (DEFAULT_MEAN,)
    std: tuple[float, ...] = (DEFAULT_STD,)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def __post_init__(self):
        if isinstance(self.in_chans, bool) or int(self.in_chans) != self.in_chans or self.in_chans < 1:
            raise VitkitError(f"in_chans must be a positive int, got {self.in_chans!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise VitkitError(f"unknown interpolation '{self.interpolation}'; "
                              f"choose one of {', '.join(INTERPOLATIONS)}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise VitkitError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        mean = _per_channel(self.mean, int(self.in_chans), "mean")
        std = _per_channel(self.std, int(self.in_chans), "std")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise VitkitError(f"mean must be finite and std finite and > 0 for every channel, got mean={mean}, "
                              f"std={std}; fix 'preprocess' in the model's config.json")
        for name, value in (("img_size", _size(self.img_size)), ("in_chans", int(self.in_chans)),
                            ("mean", mean), ("std", std), ("crop_pct", float(self.crop_pct))):
            object.__setattr__(self, name, value)

    @classmethod
    def for_config(cls, config) -> Preprocess:
        """The default for a model config without saved statistics: its size, mean = std = 0.5."""
        return cls(config.img_size, config.in_chans)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, config) -> Preprocess:
        """Read the ``preprocess`` entry of a config.json; missing keys come from ``config``."""
        data = dict(data or {})
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise VitkitError(f"unknown preprocess field(s) {sorted(unknown)}; "
                              f"valid: {', '.join(f.name for f in dataclasses.fields(cls))}")
        data.setdefault("img_size", config.img_size)
        data.setdefault("in_chans", config.in_chans)
        try:
            return cls(**data)
        except VitkitError:
            raise
        except (TypeError, ValueError) as exc:  # e.g. a string where a number belongs
            raise VitkitError(f"bad preprocess entry {data} in config.json: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a square ``img_size`` is written as one int."""
        h, w = self.img_size
        return {"img_size": h if h == w else [h, w], "in_chans": self.in_chans, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    def adapted(self, img_size=None, in_chans: int | None = None, crop_pct: float | None = None) -> Preprocess:
        """The same statistics for another input size, channel count or crop fraction.

        Channels follow :func:`vitkit.models.adapt.adapt_input_conv`: one channel takes the
        mean of the statistics, more channels repeat them cyclically.
        """
        chans = self.in_chans if in_chans is None else int(in_chans)
        mean, std = self.mean, self.std
        if chans != self.in_chans:
            if chans == 1:
                mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
            else:
                mean, std = ((mean * chans)[:chans], (std * chans)[:chans])
        return dataclasses.replace(self, img_size=self.img_size if img_size is None else img_size, in_chans=chans,
                                   mean=mean, std=std, crop_pct=self.crop_pct if crop_pct is None else crop_pct)

    @property
    def resize_size(self) -> tuple[int, int]:
        """The size before the center crop: ``img_size / crop_pct`` (the shorter side for a square size)."""
        return math.floor(self.img_size[0] / self.crop_pct), math.floor(self.img_size[1] / self.crop_pct)

    def resize(self, image: torch.Tensor, interpolation: str | None = None) -> torch.Tensor:
        """(..., C, h, w) -> (..., C, H, W): shorter side to ``size / crop_pct``, center crop;
        ``interpolation`` overrides (e.g. "nearest" for masks)."""
        mode = INTERPOLATIONS[interpolation or self.interpolation]
        h, w = self.img_size
        if tuple(image.shape[-2:]) == (h, w) and self.crop_pct == 1.0:
            return image
        size = [self.resize_size[0]] if h == w else list(self.resize_size)  # one int: the shorter side
        image = TF.resize(image, size, interpolation=mode, antialias=True)  # a no-op at that size already
        return TF.center_crop(image, [h, w])

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (0..255) or float (0..1) image (..., C, H, W) -> float32 (x - mean) / std."""
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return (x - self._stats[0]) / self._stats[1]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """An image (uint8 or 0..1 float, (..., C, h, w)) -> the model input (..., C, H, W)."""
        return self.normalize(self.resize(image))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) model input -> pixel values in [0, 1]."""
        mean, std = (t.to(x.dtype) for t in self._stats)
        return (x * std + mean).clamp(0, 1)

    @property
    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as float32 (C, 1, 1) tensors, built once per object."""
        stats = self.__dict__.get("_stats_cache")
        if stats is None:
            stats = (torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1),
                     torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1))
            object.__setattr__(self, "_stats_cache", stats)
        return stats
