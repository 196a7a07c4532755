"""Weights of any origin -> vitkit: checkpoint files, and model folders as timm, transformers
and vitkit write them.

    read_checkpoint(path)              .safetensors, or .pth / .bin / .pt read with torch.load(weights_only=True)
    weights_format(state, model)       "vitkit" | "timm" | "transformers", told by the keys
    to_vitkit(state, model, fmt)       renamed by the timm / transformers converters
    read_folder(path)                  a folder's config.json -> FolderModel (class, config, metadata, weights)

A folder's kind comes from its config.json: a vitkit ``family``, timm's ``architecture`` or
transformers' ``model_type``. Converted foreign weights go through the same checks as
vitkit's own (names, shapes, dtypes, finite values).
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.config import from_dict
from vitkit.convert.hf import convert_hf_state_dict, hf_folder_config
from vitkit.convert.timm import convert_timm_resnet_state_dict, convert_timm_state_dict, timm_folder_config
from vitkit.errors import VitkitError
from vitkit.io import read_json
from vitkit.models.catalog import family_class
from vitkit.models.hub import CONFIG_NAME, WEIGHTS_NAME, load_state_dict, read_metadata
from vitkit.models.resnet import ResNet
from vitkit.models.vit import VisionTransformer

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
FOREIGN_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what timm and transformers save, preferred first
PROCESSOR_NAME = "preprocessor_config.json"
_WRAPPERS = ("state_dict", "model", "module", "model_state_dict")  # training checkpoints nest the weights
_HF_KEY = re.compile(r"^(vit\.)?(embeddings\.|encoder\.layer\.|layers\.\d+\.(attention|mlp|layernorm))")


@dataclass(frozen=True)
class FolderModel:
    """What a model folder holds: class + config, metadata (preprocess, class names), weights."""

    cls: type
    config: Any
    meta: dict
    weights: Path
    format: str  # "vitkit" | "timm" | "transformers"


def read_checkpoint(path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file (a .safetensors file checked against ``sha256`` when
    given); pickled code is never run (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_state_dict(path, sha256)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise VitkitError(f"cannot read checkpoint {path}: {str(exc).strip().splitlines()[0][:200]}; it must be a "
                          "state dict saved with torch.save (checkpoints that need code to unpickle are refused)"
                          ) from None
    return _state_dict(obj, path)


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a (possibly nested: {"state_dict": ...}, {"model": ...}) checkpoint."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitkitError(f"{path} holds no state dict of tensors; save one with torch.save(model.state_dict(), ...)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def weights_format(state: Mapping[str, torch.Tensor], model) -> str:
    """transformers (its key names), vitkit (every key is the model's or a head's), else timm."""
    if any(_HF_KEY.match(k) for k in state):
        return "transformers"
    own = model.state_dict().keys()
    heads = tuple(f"{p}." for p in model.classifier)
    return "vitkit" if all(k in own or k.startswith(heads) for k in state) else "timm"


def to_vitkit(state: dict[str, torch.Tensor], model, fmt: str | None, source_config=None) -> dict[str, torch.Tensor]:
    """``state`` in format ``fmt`` (None: told by the keys) -> vitkit names for ``model``."""
    fmt = fmt or weights_format(state, model)
    if fmt == "vitkit":
        return state
    name = type(model).__name__
    if fmt == "transformers":
        if not isinstance(model, VisionTransformer):
            raise VitkitError(f"transformers ViT weights fit vitkit's ViT models, not {name}; pick a vit_* model")
        return convert_hf_state_dict(state)
    if isinstance(model, VisionTransformer):
        return convert_timm_state_dict(state, source_config or model.config)
    if isinstance(model, ResNet):
        return convert_timm_resnet_state_dict(state)
    raise VitkitError(f"these weights are not vitkit's, and timm weights fit vitkit's ViT and ResNet models, not "
                      f"{name}; pick a vit_* or resnet* model, or weights saved by vitkit")


def read_folder(path: Path) -> FolderModel:
    """The model in a folder with a config.json: vitkit's, timm's or transformers' layout."""
    meta = read_json(path / CONFIG_NAME, "model config", "re-save the model (save_pretrained) or re-download it")
    if "architecture" in meta and "family" not in meta:
        cls, config, pre, names = timm_folder_config(meta)
        return FolderModel(cls, config, _meta(cls, pre, names, "timm"), _foreign_weights(path), "timm")
    if "model_type" in meta and "family" not in meta:
        processor = (read_json(path / PROCESSOR_NAME, "image processor config", "re-download the model")
                     if (path / PROCESSOR_NAME).is_file() else None)
        config, pre, names = hf_folder_config(meta, processor)
        return FolderModel(VisionTransformer, config, _meta(VisionTransformer, pre, names, "transformers"),
                           _foreign_weights(path), "transformers")
    return _vitkit_folder(path)


def _vitkit_folder(path: Path) -> FolderModel:
    """A save_pretrained dir; its config.json checked by :func:`~vitkit.models.hub.read_metadata`
    (which also names a folder that is none of the three kinds, such as a run's own config)."""
    meta = read_metadata(path)
    cls = family_class(meta["family"])
    try:
        config = from_dict(cls.config_cls, meta["config"])
    except VitkitError as exc:
        raise VitkitError(f"cannot read model config {path / CONFIG_NAME}: {exc}") from None
    return FolderModel(cls, config, meta, path / WEIGHTS_NAME, "vitkit")


def _meta(cls: type, preprocess: dict, class_names: list[str] | None, source: str) -> dict:
    return {"family": cls.family, "preprocess": preprocess, "class_names": class_names, "source": source}


def _foreign_weights(path: Path) -> Path:
    for name in FOREIGN_WEIGHTS:
        if (path / name).is_file():
            return path / name
    sharded = sorted(p.name for p in path.glob("*.index.json"))
    hint = f" (sharded weights {sharded[0]} are not read)" if sharded else ""
    raise VitkitError(f"{path} has a config.json but none of {', '.join(FOREIGN_WEIGHTS)}{hint}")
