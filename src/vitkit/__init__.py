"""vitkit: Vision Transformers (ViT) and token-based Visual Transformers (VT) for PyTorch.

The model API (``create_model`` and friends, from :mod:`vitkit.registry`) is loaded on
first use, so that ``import vitkit`` (and ``vitkit --help``) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vitkit.errors import VitkitError

__version__ = "0.1.0"

_REGISTRY_API = ("create_model", "get_config", "list_models", "register_model")
__all__ = [*_REGISTRY_API, "VitkitError", "__version__"]

if TYPE_CHECKING:
    from vitkit.registry import create_model, get_config, list_models, register_model  # noqa: F401


def __getattr__(name: str):
    if name in _REGISTRY_API:
        return getattr(importlib.import_module("vitkit.registry"), name)
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
