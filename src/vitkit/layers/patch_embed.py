"""Patch embedding (ViT eq. 1: x_p^i E) and the hybrid CNN-feature patch source."""
from __future__ import annotations

import math

import torch
import torch.fx
from torch import nn

from vitkit.errors import VitkitError
from vitkit.layers.helpers import to_2tuple
from vitkit.layers.resnet import LAYOUTS, ResNetTrunk


def patch_grid(h: int, w: int, patch: tuple[int, int], what: str) -> tuple[int, int]:
    """(gh, gw) = (H/p, W/p); a size that does not divide is a clear error naming ``what``."""
    ph, pw = patch
    if h % ph or w % pw:
        raise VitkitError(f"image size {h}x{w} is not divisible by {what} {ph}x{pw}; "
                          f"resize or crop the images to a multiple of {ph}")
    return h // ph, w // pw


torch.fx.wrap("patch_grid")  # traced as one call: checked on the real image size when the graph runs

class PatchEmbed(nn.Module):
    """Split (B, C, H, W) into p x p patches and project each to D: a stride-p convolution.

    Equivalent to flattening patches to (B, N, C p^2) and multiplying by E (C p^2, D).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return patch_grid(h, w, self.patch_size, "the patch size")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self.grid(x.shape[-2], x.shape[-1])
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


HYBRID_BACKBONES = {f"resnet{depth}": depth for depth in LAYOUTS}


class HybridEmbed(nn.Module):
    """Hybrid ViT patch source (Dosovitskiy et al. §3.1): CNN feature map -> p x p patches -> D.

    The CNN is the stem and first ``num_stages`` stages of a ResNet (:class:`ResNetTrunk`).
    """

    def __init__(self, backbone: str, num_stages: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if backbone not in HYBRID_BACKBONES:
            raise VitkitError(f"unknown hybrid backbone '{backbone}'; choose one of {', '.join(HYBRID_BACKBONES)}")
        if not 1 <= num_stages <= 4:
            raise VitkitError(f"hybrid_stages must be 1..4, got {num_stages}")
        self.backbone = ResNetTrunk(HYBRID_BACKBONES[backbone], in_chans, num_stages=num_stages)
        self.stride = self.backbone.reductions[-1]
        self.in_chans = in_chans
        self.patch = PatchEmbed(patch_size, self.backbone.channels[-1], embed_dim)
        self.patch_size = tuple(p * self.stride for p in self.patch.patch_size)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        what = f"the hybrid model's total stride (CNN {self.stride} x patch {self.patch.patch_size[0]})"
        return patch_grid(h, w, self.patch_size, what)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        self.grid(x.shape[-2], x.shape[-1])
        return self.patch(self.backbone(x))  # (B, N, D), grid


def stem_strides(channels: tuple[int, ...], strides: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The stride of each ViT_C stem conv: ``strides`` as given, or stride 2 for every entry of ``channels``."""
    return tuple(strides) or (2,) * len(channels)


class ConvStemEmbed(nn.Module):
    """Convolutional stem in place of the patchify layer (ViT_C, Xiao et al. 2021, "Early
    Convolutions Help Transformers See Better"): one 3x3 conv + BN + ReLU per entry of
    ``channels``, with the matching entry of ``strides`` (1 or 2; default: all 2), then a
    1x1 conv to D. Total stride = the product of the strides; each stride-2 conv rounds up,
    so any image size works (28 px with 3 stride-2 convs -> a 4x4 grid).
    """

    def __init__(self, channels: tuple[int, ...], in_chans: int, embed_dim: int,
                 strides: tuple[int, ...] = ()):
        super().__init__()
        self.strides = stem_strides(channels, strides)
        layers, c = [], in_chans
        for out, stride in zip(channels, self.strides, strict=True):
            layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            c = out
        layers.append(nn.Conv2d(c, embed_dim, kernel_size=1))
        self.stem = nn.Sequential(*layers)
        self.in_chans = in_chans
        self.patch_size = (math.prod(self.strides),) * 2

    def grid(self, h: int, w: int) -> tuple[int, int]:
        for stride in self.strides:
            h, w = -(-h // stride), -(-w // stride)  # ceil: 3x3, padding 1
        return h, w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.stem(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])  # (B, N, D)
