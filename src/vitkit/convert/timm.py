"""timm ``vit_*`` / ``deit_*`` / hybrid weights -> vitkit :class:`VisionTransformer`.

vitkit's parameter names mirror timm's, so most keys map one-to-one. The differences
handled here: a hybrid's CNN trunk children are renamed to torchvision's names
(``conv1, bn1, layer1..``) and its projection moves from ``patch_embed.proj`` to
``patch_embed.patch.proj``; everything vitkit cannot represent (register tokens,
``no_embed_class``, attention pooling, pre-norm, RMSNorm, SwiGLU, ...) is refused with a
:class:`VitkitError` naming the feature. timm is imported only when a model is inspected.

A folder as timm publishes it on the Hub (``config.json`` with ``architecture``,
``model_args`` and ``pretrained_cfg`` next to the weights) is read by
:func:`timm_folder_config`: an architecture vitkit also has (``vit_base_patch16_224``,
``resnet50``, ...) needs no timm; any other is built by timm on the ``meta`` device and
read by :func:`timm_config`. ``pretrained_cfg`` becomes the preprocessing (input size,
mean/std, interpolation, crop fraction). timm ResNet weights load into vitkit's ResNet.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vitkit.config import apply_overrides
from vitkit.errors import VitkitError
from vitkit.layers.patch_embed import HYBRID_BACKBONES
from vitkit.layers.resnet import LAYOUTS
from vitkit.models.catalog import get_entry, is_registered
from vitkit.models.hub import check_state_dict
from vitkit.models.resnet import ResNet
from vitkit.models.vit import VisionTransformer, ViTConfig

# Key fragments that only occur in timm features vitkit does not implement.
_UNSUPPORTED_KEYS = {
    r"^reg_token": "register tokens (reg_tokens > 0)",
    r"^attn_pool\.": "attention pooling (global_pool='map'/'prr')",
    r"^norm_pre\.": "a norm before the blocks (pre_norm=True, CLIP style)",
    r"^patch_embed\.norm\.": "a norm inside the patch embedding (embed_norm_layer)",
    r"\.attn\.norm\.": "attention output norm (scale_attn_norm=True)",
    r"\.attn\.gate\.": "gated attention",
    r"\.mlp\.norm\.": "MLP hidden norm (scale_mlp_norm=True)",
    r"\.mlp\.fc1_[gx]\.|\.mlp\.w12\.": "a SwiGLU MLP",
    r"\.attn\.lambda_|\.attn\.sub_norm\.": "differential attention",
}

# Block layouts of the torchvision ResNets that vitkit's hybrid trunk can be.
_RESNET_LAYOUTS = {name: (LAYOUTS[depth][0].__name__, LAYOUTS[depth][1]) for name, depth in HYBRID_BACKBONES.items()}


def _unsupported(feature: str) -> VitkitError:
    return VitkitError(f"timm model uses {feature}, which vitkit's VisionTransformer does not support; "
                       "convert a plain ViT/DeiT/ResNet-hybrid model instead")


def _is(module: nn.Module | None, *names: str) -> bool:
    return module is not None and type(module).__name__ in names


# ---------------------------------------------------------------- model -> config
def _check_norm(module: nn.Module, where: str) -> float:
    """The eps of a LayerNorm with affine weights; anything else is refused."""
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise _unsupported(f"{type(module).__name__} as {where} (only affine LayerNorm is supported)")
    return float(module.eps)


def _check_top_level(m: nn.Module) -> None:
    """Refuse model-level options that change the forward pass."""
    if getattr(m, "reg_token", None) is not None:
        raise _unsupported("register tokens (reg_tokens > 0)")
    if getattr(m, "no_embed_class", False):
        raise _unsupported("no_embed_class=True (pos-embedding without the prefix tokens, DeiT-III style)")
    if getattr(m, "pos_embed", None) is None:
        raise _unsupported("no learned position embedding (pos_embed='none')")
    if getattr(m, "attn_pool", None) is not None:
        raise _unsupported(f"attention pooling (global_pool='{m.global_pool}')")
    if m.global_pool not in ("token", "avg"):
        raise _unsupported(f"global_pool='{m.global_pool}' (only 'token' and 'avg' are supported)")
    if getattr(m, "pool_include_prefix", False):
        raise _unsupported("pool_include_prefix=True")
    if not isinstance(m.norm_pre, nn.Identity):
        raise _unsupported("a norm before the blocks (pre_norm=True, CLIP style)")
    if isinstance(m.norm, nn.Identity) and isinstance(m.fc_norm, nn.Identity):
        raise _unsupported("final_norm=False (no final LayerNorm)")
    if getattr(m, "dist_token", None) is not None and not isinstance(m.fc_norm, nn.Identity):
        raise _unsupported("a distilled model with fc_norm")


def _check_block(block: nn.Module, i: int) -> None:
    """Refuse block variants whose computation differs from vitkit's pre-norm Block."""
    if not _is(block, "Block"):
        raise _unsupported(f"block type {type(block).__name__} in blocks.{i} (only the pre-norm Block)")
    attn, mlp = block.attn, block.mlp
    if not _is(attn, "Attention") or getattr(attn, "gate", None) is not None:
        raise _unsupported(f"attention type {type(attn).__name__} in blocks.{i}")
    if not isinstance(attn.norm, nn.Identity):
        raise _unsupported("attention output norm (scale_attn_norm=True)")
    if attn.proj.bias is None:
        raise _unsupported("an attention projection without bias (proj_bias=False)")
    if not _is(mlp, "Mlp") or not isinstance(mlp.norm, nn.Identity) or mlp.fc1.bias is None:
        raise _unsupported(f"MLP type {type(mlp).__name__} (or a variant) in blocks.{i}")
    act = mlp.act
    if type(act) is not nn.GELU or act.approximate != "none":
        raise _unsupported(f"MLP activation {act!r} (vitkit uses exact GELU)")
    for name in ("norm1", "norm2"):
        _check_norm(getattr(block, name), f"blocks.{i}.{name}")
    if not isinstance(attn.q_norm, nn.Identity):
        _check_norm(attn.q_norm, f"blocks.{i}.attn.q_norm")


def _block_fields(m: nn.Module) -> dict[str, Any]:
    """embed_dim, depth, heads, mlp_ratio, qkv_bias, qk_norm, init_values, eps from the blocks."""
    for i, block in enumerate(m.blocks):
        _check_block(block, i)
    b0 = m.blocks[0]
    dim = m.embed_dim
    if b0.attn.num_heads * b0.attn.head_dim != dim:
        raise _unsupported(f"attention width {b0.attn.num_heads * b0.attn.head_dim} != embed_dim {dim}")
    hidden = b0.mlp.fc1.out_features
    mlp_ratio = hidden / dim
    if int(dim * mlp_ratio) != hidden:
        raise VitkitError(f"MLP width {hidden} is not representable as embed_dim {dim} * mlp_ratio")
    ls = b0.ls1
    init_values = None if isinstance(ls, nn.Identity) else (getattr(ls, "init_values", None) or 1e-5)
    drop_path = getattr(m.blocks[-1].drop_path1, "drop_prob", 0.0)
    return dict(embed_dim=dim, depth=len(m.blocks), num_heads=b0.attn.num_heads, mlp_ratio=mlp_ratio,
                qkv_bias=b0.attn.qkv.bias is not None, qk_norm=not isinstance(b0.attn.q_norm, nn.Identity),
                init_values=init_values, attn_drop_rate=float(b0.attn.attn_drop.p),
                drop_path_rate=float(drop_path))


def _norm_eps(m: nn.Module) -> float:
    """The one LayerNorm eps used throughout (vitkit has a single ``norm_eps``)."""
    eps = {_check_norm(mod, name) for name, mod in m.named_modules()
           if isinstance(mod, nn.LayerNorm) and not name.startswith("patch_embed.backbone")}
    final = m.fc_norm if isinstance(m.norm, nn.Identity) else m.norm
    eps.add(_check_norm(final, "the final norm"))
    if len(eps) != 1:
        raise _unsupported(f"different LayerNorm eps values {sorted(eps)}")
    return eps.pop()


def _square(value, what: str) -> int:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise _unsupported(f"a non-square {what} {a}x{b}")
    return int(a)


def _patch_fields(m: nn.Module) -> dict[str, Any]:
    """Patch size, image size and channels of a plain conv patch embedding."""
    pe = m.patch_embed
    if not _is(pe, "PatchEmbed"):
        raise _unsupported(f"patch embedding {type(pe).__name__}")
    if not isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity):
        raise _unsupported("a norm inside the patch embedding (embed_norm_layer)")
    if getattr(pe, "dynamic_img_pad", False):
        raise _unsupported("dynamic_img_pad=True")
    if pe.proj.bias is None:
        raise _unsupported("a patch projection without bias")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride):
        raise _unsupported("overlapping patches (kernel size != stride)")
    return dict(patch_size=_square(pe.patch_size, "patch size"), in_chans=pe.proj.in_channels)


def _img_size(m: nn.Module) -> int | tuple[int, int]:
    size = getattr(m.patch_embed, "img_size", None)
    if size is None:
        raise VitkitError("the timm model has no fixed img_size; build it with img_size=...")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h) if h == w else (int(h), int(w))


def timm_config(timm_model: nn.Module) -> ViTConfig:
    """The vitkit :class:`ViTConfig` equivalent to a timm ``VisionTransformer`` (or distilled) instance.

    Works on a model built on the ``meta`` device (only shapes and options are read).
    """
    m = timm_model
    if not _is(m, "VisionTransformer", "VisionTransformerDistilled"):
        raise VitkitError(f"expected a timm VisionTransformer or VisionTransformerDistilled, got "
                          f"{type(m).__name__}; build it with timm.create_model('vit_...' or 'deit_...')")
    _check_top_level(m)
    distilled = getattr(m, "dist_token", None) is not None
    hybrid = _is(m.patch_embed, "HybridEmbed")
    fields = _hybrid_fields(m.patch_embed)[0] if hybrid else _patch_fields(m)
    fields.update(_block_fields(m))
    use_fc_norm = not isinstance(m.fc_norm, nn.Identity)
    cfg = ViTConfig(
        img_size=_img_size(m), num_classes=m.num_classes, class_token=m.cls_token is not None,
        global_pool=m.global_pool, fc_norm=None if use_fc_norm == (m.global_pool == "avg") else use_fc_norm,
        distilled=distilled, drop_rate=float(m.head_drop.p), norm_eps=_norm_eps(m), **fields,
    )
    cfg.validate()
    return cfg


# ---------------------------------------------------------------- hybrid trunk
def _trunk_roles(backbone: nn.Module) -> dict[str, str]:
    """Map the timm trunk's child names to torchvision's (conv1, bn1, relu, maxpool, layerN)."""
    roles: dict[str, str] = {}
    stages = 0
    for name, child in backbone.named_children():
        if isinstance(child, nn.Conv2d) and "conv1" not in roles.values():
            roles[name] = "conv1"
        elif isinstance(child, nn.BatchNorm2d) and "bn1" not in roles.values():
            roles[name] = "bn1"
        elif isinstance(child, nn.MaxPool2d):
            roles[name] = "maxpool"
        elif isinstance(child, (nn.ReLU, nn.Identity)) or name in ("global_pool", "fc"):
            pools = hasattr(child, "is_identity") and not child.is_identity()
            if pools or list(child.parameters()):
                raise _unsupported(f"a pooled/classifier output ({name}) on the hybrid backbone; "
                                   "build it with num_classes=0, global_pool='' or features_only=True")
        elif isinstance(child, nn.Sequential) and len(child) and _is(child[0], "BasicBlock", "Bottleneck"):
            stages += 1
            roles[name] = f"layer{stages}"
        else:
            raise _unsupported(f"hybrid backbone part {name} ({type(child).__name__}); "
                               "only a torchvision-style ResNet stem + stages")
    if [r for r in ("conv1", "bn1", "maxpool") if r not in roles.values()] or stages == 0:
        raise _unsupported("a hybrid backbone that is not a ResNet stem (conv1, bn1, maxpool) + stages")
    return roles


def _resnet_name(backbone: nn.Module, roles: dict[str, str]) -> str:
    """Which torchvision ResNet (18/34/50/101) has this trunk's first stages."""
    layers = [getattr(backbone, n) for n, r in roles.items() if r.startswith("layer")]
    kind = type(layers[0][0]).__name__
    counts = tuple(len(layer) for layer in layers)
    conv1 = getattr(backbone, next(n for n, r in roles.items() if r == "conv1"))
    if tuple(conv1.kernel_size) != (7, 7) or tuple(conv1.stride) != (2, 2) or conv1.out_channels != 64:
        raise _unsupported("a ResNet stem other than the 7x7/2 64-channel conv (e.g. a deep 'd' stem)")
    for block in (b for layer in layers for b in layer):
        down = getattr(block, "downsample", None)
        if down is not None and not isinstance(down[0], nn.Conv2d):
            raise _unsupported("an average-pool downsample (ResNet-D) in the hybrid backbone")
    for name, (block_kind, layout) in _RESNET_LAYOUTS.items():
        if block_kind == kind and layout[:len(counts)] == counts:
            return name
    raise _unsupported(f"a {kind} trunk with stage depths {counts} (not ResNet-18/34/50/101)")


def _hybrid_fields(pe: nn.Module) -> tuple[dict[str, Any], dict[str, str]]:
    """(config fields, child-name map) of a timm ``HybridEmbed`` over a ResNet trunk."""
    if not isinstance(pe.proj, nn.Conv2d) or pe.proj.bias is None or getattr(pe, "dynamic_img_pad", False):
        raise _unsupported("a hybrid embedding without a biased conv projection (or with dynamic padding)")
    roles = _trunk_roles(pe.backbone)
    fields = dict(hybrid_backbone=_resnet_name(pe.backbone, roles),
                  hybrid_stages=sum(r.startswith("layer") for r in roles.values()),
                  patch_size=_square(tuple(pe.proj.kernel_size), "patch size"), in_chans=pe.in_chans)
    return fields, roles


# ---------------------------------------------------------------- state dict
def _check_keys(state_dict: Mapping[str, torch.Tensor]) -> None:
    for key in state_dict:
        for pattern, feature in _UNSUPPORTED_KEYS.items():
            if re.search(pattern, key):
                raise _unsupported(f"{feature} (key '{key}')")


def _rename(key: str, roles: Mapping[str, str], hybrid: bool) -> str:
    """timm key -> vitkit key (identity except for a hybrid's trunk and projection)."""
    if not hybrid or not key.startswith("patch_embed."):
        return key
    if key.startswith("patch_embed.proj."):
        return "patch_embed.patch." + key[len("patch_embed."):]
    prefix = "patch_embed.backbone."
    if key.startswith(prefix):
        child, _, rest = key[len(prefix):].partition(".")
        return f"{prefix}{roles.get(child, child)}.{rest}"
    return key


def _check_pos_embed(pos: torch.Tensor, cfg: ViTConfig) -> None:
    """A pos-embedding one prefix-count short is timm's ``no_embed_class`` layout."""
    prefix = int(cfg.class_token) + int(cfg.distilled)
    stride = cfg.patch_size * (4 * 2 ** (cfg.hybrid_stages - 1) if cfg.hybrid_backbone else 1)
    h, w = cfg.img_size
    if prefix and pos.shape[1] == (h // stride) * (w // stride):
        raise _unsupported("no_embed_class=True (pos_embed has no entries for the prefix tokens)")


def convert_timm_state_dict(state_dict: Mapping[str, torch.Tensor],
                            timm_model_or_cfg: nn.Module | ViTConfig) -> dict[str, torch.Tensor]:
    """A timm ViT/DeiT state dict -> vitkit names, for the given timm model or vitkit config.

    With a :class:`ViTConfig` a hybrid trunk must use timm's ResNet child names
    (``conv1, bn1, act1, maxpool, layerN``); with the timm model any layout it has is mapped.
    """
    if isinstance(timm_model_or_cfg, ViTConfig):
        cfg, roles = timm_model_or_cfg, {}
    else:
        cfg = timm_config(timm_model_or_cfg)
        pe = timm_model_or_cfg.patch_embed
        roles = _hybrid_fields(pe)[1] if cfg.hybrid_backbone else {}
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    _check_keys(state)
    out = {_rename(k, roles, bool(cfg.hybrid_backbone)): v for k, v in state.items()}
    if "pos_embed" in out:
        _check_pos_embed(out["pos_embed"], cfg)
    return out


def from_timm(timm_model: nn.Module) -> VisionTransformer:
    """A vitkit :class:`VisionTransformer` with the architecture and weights of a timm ViT.

    The result is in the same train/eval mode as ``timm_model``; its outputs match timm's
    (a distilled model returns :class:`~vitkit.models.vit.DistilledOutput` while training,
    like timm with ``set_distilled_training(True)``).
    """
    cfg = timm_config(timm_model)
    state = convert_timm_state_dict(timm_model.state_dict(), timm_model)
    model = VisionTransformer(cfg)
    check_state_dict(model, state, source=f"timm {type(timm_model).__name__}")
    model.load_state_dict(state, strict=True)
    return model.train(timm_model.training)


# ---------------------------------------------------------------- hub folders
_TIMM_MEAN, _TIMM_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults (ImageNet)


def convert_timm_resnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm (= torchvision) ResNet keys -> vitkit's ResNet: the trunk under ``trunk.``, ``fc`` as is."""
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return {k if k.startswith("fc.") else f"trunk.{k}": v for k, v in state.items()}


def timm_folder_config(meta: Mapping[str, Any]) -> tuple[type, Any, dict, list[str] | None]:
    """A timm hub ``config.json`` -> (model class, vitkit config, preprocess dict, class names)."""
    arch = meta.get("architecture")
    if not isinstance(arch, str):
        raise VitkitError("a timm config.json names its 'architecture'; this one does not")
    pcfg = meta.get("pretrained_cfg") or {}
    args = dict(meta.get("model_args") or {})
    args.setdefault("num_classes", meta.get("num_classes", pcfg.get("num_classes", 1000)))
    if meta.get("global_pool"):
        args.setdefault("global_pool", meta["global_pool"])
    size = pcfg.get("input_size")
    if size and "img_size" not in args:
        args["img_size"] = list(size[1:])
    if size and "in_chans" not in args:
        args["in_chans"] = int(size[0])
    cls, config = _preset_config(arch, args) or _built_config(arch, args)
    return cls, config, timm_preprocess(pcfg, config), _label_names(meta.get("label_names"))


def _preset_config(arch: str, args: dict) -> tuple[type, Any] | None:
    """A vitkit preset of the same name (the same architecture) with timm's ``model_args``, if all fit."""
    if not is_registered(arch) or get_entry(arch).cls not in (VisionTransformer, ResNet):
        return None
    entry = get_entry(arch)
    if set(args) - set(entry.config.__dataclass_fields__):
        return None  # an option vitkit's preset does not have: let timm read it
    return entry.cls, apply_overrides(entry.config, args)


def _built_config(arch: str, args: dict) -> tuple[type, ViTConfig]:
    """timm builds ``arch`` on the meta device (no memory, no weights); :func:`timm_config` reads it."""
    try:
        import timm
    except ImportError:
        raise VitkitError(f"timm architecture '{arch}' is not one of vitkit's presets and timm is not installed "
                          "to read it; `pip install timm`, or pass a vitkit model name and pretrained=...") from None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **args)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise VitkitError(f"timm cannot build '{arch}' with {args}: {str(exc).splitlines()[0]}") from None
    return VisionTransformer, timm_config(model)


def timm_preprocess(pcfg: Mapping[str, Any], config) -> dict:
    """timm's ``pretrained_cfg`` -> a vitkit preprocess dict (timm's defaults where it is silent;
    an interpolation vitkit lacks, such as lanczos, becomes bicubic)."""
    interp = pcfg.get("interpolation", "bicubic")
    return {"img_size": config.img_size, "in_chans": config.in_chans,
            "mean": list(pcfg.get("mean", _TIMM_MEAN)), "std": list(pcfg.get("std", _TIMM_STD)),
            "interpolation": interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
            "crop_pct": float(pcfg.get("crop_pct", 0.875))}


def _label_names(names) -> list[str] | None:
    if isinstance(names, Mapping):
        names = [names[k] for k in sorted(names, key=int)]
    return [str(n) for n in names] if names else None
