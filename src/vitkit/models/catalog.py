"""The table of registered presets and model families (filled as the family modules load).

A registered name is a *preset*: a model class plus a config instance. A *family* maps the
``family`` string that ``save_pretrained`` writes back to its model class. This module sits
below every family module, so they register themselves at import; :mod:`vitkit.registry`
imports the families and builds models from this table.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
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


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def list_models(pattern: str = "*", tag: str | None = None) -> list[str]:
    """Sorted registered names matching a glob ``pattern`` (and having ``tag``)."""
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (tag is None or tag in e.tags)
    )


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise VitkitError(
            f"unknown model '{name}'{close_matches(name, _REGISTRY)}; run `vitkit models` to list them"
        )
    return _REGISTRY[name]


def get_config(name: str, **overrides):
    """The resolved config of preset ``name`` with ``overrides`` applied."""
    return apply_overrides(get_entry(name).config, overrides)
