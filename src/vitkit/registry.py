"""Model registry: ``register_model``, ``create_model``, ``list_models``.

A registered name is a *preset*: a model class plus a config instance. ``create_model``
copies the preset's config, applies typed overrides, builds the model and optionally
loads weights saved with ``save_pretrained``.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.config import apply_overrides, close_matches
from vitkit.errors import VitkitError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type
    config: Any
    tags: tuple[str, ...] = ()

    def build(self, **overrides):
        return self.cls(apply_overrides(self.config, overrides))


_REGISTRY: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, type] = {}


def register_family(cls: type) -> type:
    """Class decorator: make a model class loadable from a saved config by its ``family``."""
    _FAMILIES[cls.family] = cls
    return cls


def family_class(family: str) -> type:
    _ensure_models_imported()
    if family not in _FAMILIES:
        raise VitkitError(f"unknown model family '{family}'{close_matches(family, _FAMILIES)}")
    return _FAMILIES[family]


def register_model(name: str, cls: type, config: Any, tags: tuple[str, ...] = ()) -> None:
    """Register preset ``name`` = ``cls(config)``. Names are unique."""
    if name in _REGISTRY:
        raise RuntimeError(f"model '{name}' is registered twice")
    _REGISTRY[name] = ModelEntry(name, cls, config, tuple(tags))


def register_presets(cls: type, presets: dict[str, Any], tags: tuple[str, ...] = ()) -> None:
    for name, cfg in presets.items():
        register_model(name, cls, cfg, tags)


def _ensure_models_imported() -> None:
    import vitkit.models  # noqa: F401  (registers every family)


def list_models(pattern: str = "*", tag: str | None = None) -> list[str]:
    """Sorted registered names matching a glob ``pattern`` (and having ``tag``)."""
    _ensure_models_imported()
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (tag is None or tag in e.tags)
    )


def get_entry(name: str) -> ModelEntry:
    _ensure_models_imported()
    if name not in _REGISTRY:
        raise VitkitError(
            f"unknown model '{name}'{close_matches(name, _REGISTRY)}; run `vitkit models` to list them"
        )
    return _REGISTRY[name]


def get_config(name: str, **overrides):
    """The resolved config of preset ``name`` with ``overrides`` applied."""
    return apply_overrides(get_entry(name).config, overrides)


def create_model(name: str, pretrained: str | Path | None = None, **overrides):
    """Build registered model ``name``; load weights from a ``save_pretrained`` dir if given.

    ``name`` may also be a directory written by ``save_pretrained``: the model is then
    rebuilt from its saved config (overrides applied on top) and its weights loaded.
    """
    from vitkit.models.hub import is_pretrained_dir, load_pretrained

    if pretrained is None and is_pretrained_dir(name):
        return load_pretrained(name, **overrides)
    model = get_entry(name).build(**overrides)
    if pretrained is not None:
        from vitkit.models.hub import load_weights

        load_weights(model, pretrained)
    return model


ModelFactory = Callable[..., Any]
