"""transformers ``ViTModel`` / ``ViTForImageClassification`` -> vitkit :class:`VisionTransformer`.

Both key layouts are read: transformers >= 5 (``layers.N.attention.q_proj``, ``mlp.fc1``)
and the older one found in most saved checkpoints (``encoder.layer.N.attention.attention.query``,
``intermediate.dense``, ``output.dense``). Separate q/k/v projections are stacked into
vitkit's fused ``attn.qkv``. HF's attention scale is head_dim^-0.5 like vitkit's SDPA.

A saved transformers folder (``config.json`` with ``model_type: vit`` and, optionally,
``preprocessor_config.json``) is read without transformers by :func:`hf_folder_config`:
the vitkit config, the preprocessing of its image processor and the class names.

Not carried over: ``ViTModel``'s pooler (dense + tanh on the class token, unused by
``ViTForImageClassification``) and the ``mask_token`` of masked-image modelling. Dropout
placement differs slightly in training (vitkit also drops after the MLP activation and
before the head); evaluation outputs are identical.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.models.hub import check_state_dict
from vitkit.models.vit import VisionTransformer, ViTConfig

_SUPPORTED = ("ViTModel", "ViTForImageClassification")

# transformers' ViTConfig defaults, for keys a config.json leaves out
_HF_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3, qkv_bias=True)
# PIL resampling codes (image processors store them as ints) -> vitkit interpolation
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}

# transformers < 5 names -> >= 5 names (applied in order, on the key without the 'vit.' prefix)
_LEGACY = [
    (r"^encoder\.layer\.", "layers."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]

# transformers >= 5 names -> vitkit names (q/k/v are handled separately)
_RENAME = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]

_DROPPED = (r"^pooler\.", r"^embeddings\.mask_token$")
_QKV = re.compile(r"^layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


def hf_config(hf_model: nn.Module) -> ViTConfig:
    """The vitkit :class:`ViTConfig` equivalent to a transformers ViT model."""
    name = type(hf_model).__name__
    if name not in _SUPPORTED:
        raise VitkitError(f"expected a transformers ViTModel or ViTForImageClassification, got {name}; "
                          "other architectures (DeiT, BEiT, ...) are not converted")
    return _vit_config(hf_model.config, classifier=name == "ViTForImageClassification")


def _vit_config(c, classifier: bool) -> ViTConfig:
    """A transformers ViT config (attributes as on ``ViTConfig``) -> vitkit's."""
    if c.hidden_act != "gelu":
        raise VitkitError(f"hidden_act='{c.hidden_act}' is not supported; vitkit's MLP uses exact GELU ('gelu')")
    heads, dim = c.num_attention_heads, c.hidden_size
    head_dim = getattr(c, "head_dim", None) or dim // heads
    if dim % heads or head_dim * heads != dim:
        raise VitkitError(f"attention width {head_dim}x{heads} != hidden_size {dim}; vitkit needs head_dim = "
                          "hidden_size / num_attention_heads")
    mlp_ratio = c.intermediate_size / dim
    if int(dim * mlp_ratio) != c.intermediate_size:
        raise VitkitError(f"intermediate_size {c.intermediate_size} is not representable as hidden_size * mlp_ratio")
    return ViTConfig(
        img_size=c.image_size, patch_size=_square_patch(c.patch_size), in_chans=c.num_channels,
        num_classes=c.num_labels if classifier else 0,
        embed_dim=dim, depth=c.num_hidden_layers, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=bool(c.qkv_bias),
        class_token=True, global_pool="token", drop_rate=float(c.hidden_dropout_prob),
        attn_drop_rate=float(c.attention_probs_dropout_prob), norm_eps=float(c.layer_norm_eps),
    )


def hf_folder_config(config: Mapping[str, Any], processor: Mapping[str, Any] | None
                     ) -> tuple[ViTConfig, dict, list[str] | None]:
    """A transformers ``config.json`` (+ ``preprocessor_config.json``) -> (vitkit config,
    preprocess dict, class names). ``architectures`` says whether it has a classifier."""
    if config.get("model_type") != "vit":
        raise VitkitError(f"transformers model_type '{config.get('model_type')}' is not converted; vitkit reads "
                          "plain ViT checkpoints (model_type 'vit')")
    labels = config.get("id2label") or {}
    fields = {**_HF_DEFAULTS, **config, "num_labels": len(labels) or 2}
    classifier = "ViTForImageClassification" in (config.get("architectures") or [])
    cfg = _vit_config(SimpleNamespace(**fields), classifier)
    names = [labels[k] for k in sorted(labels, key=int)] if classifier and labels else None
    if names and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = None  # transformers' placeholders, not names
    return cfg, hf_preprocess(processor or {}, cfg), names


def hf_preprocess(proc: Mapping[str, Any], cfg: ViTConfig) -> dict:
    """An image processor config -> a vitkit preprocess dict (ViTImageProcessor's defaults:
    resize to the model size, bilinear, mean = std = 0.5)."""
    size = proc.get("size", cfg.img_size)
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    out: dict[str, Any] = {"img_size": _hw(crop or size, cfg.img_size), "in_chans": cfg.in_chans,
                           "interpolation": _RESAMPLE.get(proc.get("resample", 2), "bicubic")}
    if crop is not None:
        out["crop_pct"] = min(1.0, out["img_size"][0] / _hw(size, cfg.img_size)[0])
    if proc.get("do_normalize", True):
        out["mean"], out["std"] = proc.get("image_mean", 0.5), proc.get("image_std", 0.5)
    else:
        out["mean"], out["std"] = 0.0, 1.0
    return out


def _hw(size, default) -> list[int]:
    """An image processor size ({"height", "width"}, {"shortest_edge"}, or an int) -> [H, W]."""
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return [int(size["height"]), int(size["width"])]
        if "shortest_edge" in size:
            return [int(size["shortest_edge"])] * 2
        size = default
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return [int(h), int(w)]


def _square_patch(size) -> int:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h != w:
        raise VitkitError(f"non-square patch size {h}x{w} is not supported; vitkit's patches are square")
    return int(h)


def _modernise(key: str) -> str:
    key = key.removeprefix("vit.")
    for pattern, repl in _LEGACY:
        key = re.sub(pattern, repl, key)
    return key


def _fuse_qkv(parts: dict[tuple[str, str], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-layer q, k, v projections into vitkit's ``attn.qkv`` (rows: q, then k, then v)."""
    out = {}
    for (layer, kind), qkv in parts.items():
        missing = [p for p in "qkv" if p not in qkv]
        if missing:
            raise VitkitError(f"layer {layer} lacks the {kind} of the {', '.join(missing)} projection(s); "
                              "the checkpoint is incomplete")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ViT state dict (either key layout) -> vitkit names."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for raw_key, value in state_dict.items():
        key = _modernise(raw_key)
        match = _QKV.match(key)
        if match:
            layer, part, kind = match.groups()
            qkv.setdefault((layer, kind), {})[part] = value
            continue
        if any(re.search(p, key) for p in _DROPPED):
            continue
        new = _rename_key(key)
        if new is None:
            raise VitkitError(f"unexpected transformers weight '{raw_key}'; only plain ViT weights are converted")
        out[new] = value
    out.update(_fuse_qkv(qkv))
    return out


def _rename_key(key: str) -> str | None:
    for pattern, repl in _RENAME:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def from_hf(hf_model: nn.Module) -> VisionTransformer:
    """A vitkit :class:`VisionTransformer` with the architecture and weights of a transformers ViT.

    ``ViTModel`` becomes a headless model (``num_classes=0``) whose ``forward_features``
    equals HF's ``last_hidden_state``; ``ViTForImageClassification`` keeps its classifier.
    The result is in the same train/eval mode as ``hf_model``.
    """
    cfg = hf_config(hf_model)
    state = convert_hf_state_dict(hf_model.state_dict())
    model = VisionTransformer(cfg)
    check_state_dict(model, state, source=f"transformers {type(hf_model).__name__}")
    model.load_state_dict(state, strict=True)
    return model.train(hf_model.training)

