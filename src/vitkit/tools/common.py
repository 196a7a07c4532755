"""What explain, export and bench share: load a model with its preprocessing, read an image."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vitkit.layers.helpers import to_2tuple


@dataclass(frozen=True)
class Preprocess:
    """How images were fed to the model: resize to ``img_size``, then (x - mean) / std."""

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) model input -> pixel values in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def _per_channel(values, in_chans: int) -> tuple[float, ...]:
    vals = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return tuple(vals * in_chans) if len(vals) == 1 else tuple(vals)


def preprocess_for(model, meta: dict | None = None) -> Preprocess:
    """From a run's saved ``preprocess`` metadata, else the config's size with mean = std = 0.5."""
    cfg = model.config
    pre = (meta or {}).get("preprocess") or {}
    in_chans = int(pre.get("in_chans", cfg.in_chans))
    return Preprocess(to_2tuple(pre.get("img_size", cfg.img_size)), in_chans,
                      _per_channel(pre.get("mean", 0.5), in_chans), _per_channel(pre.get("std", 0.5), in_chans))


def load_with_metadata(spec, **overrides):
    """(model in eval mode, Preprocess, metadata dict) for a registry name, save dir or run dir."""
    from vitkit.models.hub import load_model, read_metadata, resolve_model_dir

    model = load_model(spec, **overrides).eval()
    model_dir = resolve_model_dir(spec)
    meta = read_metadata(model_dir) if model_dir is not None else {}
    pre = preprocess_for(model, meta)
    if "img_size" in overrides:  # an explicit size wins over the saved one
        pre = dataclasses.replace(pre, img_size=to_2tuple(overrides["img_size"]))
    return model, pre, meta


def load_image_tensor(path, pre: Preprocess) -> torch.Tensor:
    """An image file -> the model's input (1, C, H, W), preprocessed as in training."""
    from vitkit.data.images import load_image, read_image

    h, w = pre.img_size
    if h == w:
        return load_image(path, pre.in_chans, h, pre.mean, pre.std).unsqueeze(0)
    from torchvision.transforms.v2 import functional as F

    x = F.resize(read_image(path, pre.in_chans), [h, w], antialias=True).float() / 255.0  # (C, H, W)
    mean, std = torch.tensor(pre.mean).view(-1, 1, 1), torch.tensor(pre.std).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)
