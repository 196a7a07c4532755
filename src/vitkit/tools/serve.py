"""What ``vitkit serve`` computes for one image, with no web framework (the page: tools/demo.py).

- classifier: the top-k classes; for a ViT also the attention rollout overlay (one forward pass
  with attention capture, so the rollout explains exactly the prediction shown);
- VT model: the tokenizer's spatial attention, one map per visual token per VT module;
- segmentation model: the predicted mask over the image, a legend, and each class's pixel share.

The model is loaded once. Calls run under ``torch.inference_mode()`` and one at a time: explain's
attention capture switches flags on the model's modules, so two calls must never interleave.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vitkit.engine.losses import split_outputs
from vitkit.tools.explain import explain_vit, image_batch, inner_vit, to_cpu
from vitkit.tools.explain_vt import explain_vt, is_vt
from vitkit.tools.overlay import blend_heatmap, blend_mask, palette

EXAMPLES_DIR = Path(__file__).parent / "examples"


def bundled_examples() -> list[Path]:
    """The small PNGs shipped with vitkit: three sklearn digits, four Fashion-MNIST test items."""
    return sorted(EXAMPLES_DIR.glob("*.png"))


class ServeResult(NamedTuple):
    """One image's answer; ``top`` is (label, probability), for segmentation the pixel share."""

    task: str  # "classification" or "segmentation"
    top: list[tuple[str, float]]
    overlay: np.ndarray | None  # (H, W, 3) uint8: rollout (ViT classifier) or mask (segmentation)
    token_maps: list[tuple[np.ndarray, str]]  # VT: (overlay, caption) per visual token
    legend: list[tuple[str, str, float]]  # segmentation: (class, "#rrggbb", pixel share), largest first

    def to_json(self) -> dict:
        return {"task": self.task, "top": [{"label": label, "prob": round(p, 6)} for label, p in self.top]}


def _hex(rgb: torch.Tensor) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in rgb)


class Predictor:
    """A loaded model with its preprocessing; ``predictor(path_or_bytes) -> ServeResult``."""

    def __init__(self, model: nn.Module, top_k: int = 5, name: str = "", device: torch.device | str = "cpu"):
        self.model, self.pre, self.name = model.eval().to(device), model.preprocess, name
        self.device = torch.device(device)
        self.task = getattr(model, "task", None) or self._probe_task()
        k = self.model.num_classes
        names = list(getattr(model, "class_names", None) or [])
        self.class_names = names if len(names) == k else [str(i) for i in range(k)]
        self.top_k = max(1, min(top_k, k))
        self.shows_tokens = is_vt(model)
        self.shows_rollout = self.task == "classification" and inner_vit(model) is not None
        self.colours = palette(k)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec, top_k: int = 5, device: torch.device | str = "cpu", overrides: dict | None = None):
        """Load a registered name, save_pretrained dir or run dir once (with its preprocessing)."""
        from vitkit.registry import create_model

        return cls(create_model(spec, **(overrides or {})), top_k, name=str(spec), device=device)

    def _probe_task(self) -> str:
        x = torch.zeros(1, self.pre.in_chans, *self.pre.img_size, device=self.device)
        with torch.inference_mode():
            logits, _ = split_outputs(self.model(x))
        return "segmentation" if logits.ndim == 4 else "classification"

    def _forward(self, x: torch.Tensor):
        """(logits, explanation or None) from ONE forward pass, both on the CPU."""
        x = x.to(self.device)
        with self._lock, torch.inference_mode():
            if self.shows_tokens:
                exp = explain_vt(self.model, x)
            elif self.shows_rollout:
                exp = explain_vit(self.model, x)
            else:
                return split_outputs(self.model(x))[0].cpu(), None
        exp = type(exp)(*(to_cpu(v) for v in exp))
        return split_outputs(exp.logits)[0], exp

    def __call__(self, source) -> ServeResult:
        """An image file path or its bytes -> ServeResult; a bad image raises VitkitError."""
        x = image_batch([source], self.pre)  # (1, C, H, W)
        logits, exp = self._forward(x)
        image = self.pre.denormalize(x)[0]  # (C, H, W) in [0, 1]
        tokens = self._token_maps(exp, image) if self.shows_tokens else []
        if self.task == "segmentation":
            return self._segmentation(logits[0], image, tokens)
        probs = logits[0].float().softmax(-1)  # (K,)
        top = probs.topk(self.top_k)
        overlay = blend_heatmap(image, exp.rollout[0]) if self.shows_rollout else None
        ranked = [(self.class_names[i], float(p)) for p, i in zip(top.values, top.indices.tolist(), strict=True)]
        return ServeResult(self.task, ranked, overlay, tokens, [])

    def _segmentation(self, logits: torch.Tensor, image: torch.Tensor, tokens) -> ServeResult:
        mask = logits.argmax(0)  # (H, W)
        share = torch.bincount(mask.flatten(), minlength=logits.shape[0]).float() / mask.numel()
        order = share.argsort(descending=True).tolist()
        legend = [(self.class_names[i], _hex(self.colours[i]), float(share[i])) for i in order if share[i] > 0]
        top = [(self.class_names[i], float(share[i])) for i in order[:self.top_k]]
        return ServeResult(self.task, top, blend_mask(image, mask, self.colours), tokens, legend)

    def _token_maps(self, exp, image: torch.Tensor) -> list[tuple[np.ndarray, str]]:
        """Tokenizer attention A of each visual token (per VT module), over the image."""
        return [(blend_heatmap(image, maps[0, t], long_side=128), f"{name} token {t}")
                for name, maps in zip(exp.names, exp.tokenizer, strict=True) for t in range(maps.shape[1])]
