"""Typed config dataclasses: overrides from Python or from ``key=value`` strings.

One source of truth: a model or recipe is a dataclass; presets are instances of it;
composite configs nest their parts' configs (a dotted key reaches them: ``vt.num_tokens``).
The CLI and ``create_model(**overrides)`` both go through :func:`apply_overrides`,
which rejects unknown fields (naming close matches), values of the wrong type and values
outside the ranges a config declares (:mod:`vitkit.checks`).
Files written by earlier layouts are read through a config class's ``migrate(dict)``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from vitkit.checks import IMG_SIZE, check_config
from vitkit.errors import VitkitError


def close_matches(name: str, choices) -> str:
    """' (did you mean a, b?)' or '' — for error messages."""
    near = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def image_size(value: Any) -> tuple[int, int]:
    """An image size as (H, W): ``224`` -> (224, 224); ``(224, 160)`` or ``[224, 160]`` kept."""
    if not IMG_SIZE(value):
        raise VitkitError(f"img_size={value!r} is out of range ({IMG_SIZE.text}); set a valid value")
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _field_types(cfg_cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cfg_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg_cls)}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def coerce(value: Any, hint: Any, key: str = "value") -> Any:
    """Convert ``value`` (often a string from the command line) to type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    try:
        if origin in (typing.Union, types.UnionType):
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                if type(None) in args:
                    return None
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return coerce(value, arg, key)
                except VitkitError as exc:
                    errors.append(str(exc))
            raise ValueError("; ".join(errors))
        if origin is typing.Literal:
            for arg in args:
                if str(arg) == str(value):
                    return arg
            raise ValueError(f"must be one of {list(args)}")
        if origin in (tuple, list):
            if isinstance(value, str):
                text = value.strip()
                value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
            inner = args[0] if args else Any
            items = [coerce(v, inner, key) for v in value] if inner is not Any else list(value)
            return tuple(items) if origin is tuple else items
        if hint is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value) if not isinstance(value, str) else int(value.strip())
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(f"not a string: {value!r}")
            return value
        return value
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise VitkitError(f"bad value for '{key}': {value!r} ({exc}); expected {_type_name(hint)}") from None


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def apply_overrides(cfg, overrides: Mapping[str, Any], prefix: str = ""):
    """Return a copy of dataclass ``cfg`` with ``overrides`` applied, typed and checked.

    Nested dataclass fields are reached with dotted keys (``optim.lr``), a mapping of their
    fields, or an instance of their class. Fields that a config class sets itself from other
    fields (its ``derived`` mapping: dotted key -> what to set instead) cannot be set by a
    dotted key; in a mapping they are recomputed.
    """
    types_ = _field_types(type(cfg))
    derived = getattr(type(cfg), "derived", {})
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in types_:
            raise VitkitError(
                f"unknown config field '{prefix}{head}' for {type(cfg).__name__}"
                f"{close_matches(head, types_)}; valid fields: {', '.join(types_)}"
            )
        if key in derived:
            raise VitkitError(f"'{prefix}{key}' follows the rest of the config; {derived[key]}")
        current = getattr(cfg, head)
        if dataclasses.is_dataclass(current):
            if rest:
                nested.setdefault(head, {})[rest] = value
            elif isinstance(value, Mapping):
                nested.setdefault(head, {}).update(value)
            elif isinstance(value, type(current)):
                changes[head] = value
            else:
                raise VitkitError(f"'{prefix}{head}' is a group; set its fields as {prefix}{head}.NAME=VALUE")
        elif rest:
            raise VitkitError(f"'{prefix}{key}' is not a group: '{prefix}{head}' has no sub-fields")
        else:
            changes[head] = coerce(value, types_[head], prefix + head)
    for head, sub in nested.items():
        sub = {k: v for k, v in sub.items() if f"{head}.{k}" not in derived}
        changes[head] = apply_overrides(changes.get(head, getattr(cfg, head)), sub, prefix=f"{prefix}{head}.")
    result = dataclasses.replace(cfg, **changes)
    check_config(result, prefix)  # the declared value ranges (vitkit.checks)
    return result


def parse_set_args(pairs) -> dict[str, str]:
    """``['a.b=1', 'c=x']`` -> ``{'a.b': '1', 'c': 'x'}`` (strings; typed later)."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VitkitError(f"bad override {pair!r}: write it as key=value, e.g. optim.lr=1e-3")
        out[key.strip()] = value
    return out


def to_dict(cfg) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cfg_cls, data: Mapping[str, Any], base=None):
    """Rebuild a config dataclass from :func:`to_dict` output (typed, checked), on top of
    ``base`` (default: the class's defaults).

    Dicts in an earlier layout are first brought up to date by ``cfg_cls.migrate`` if the
    class defines it (e.g. fields that now live in a nested config).
    """
    migrate = getattr(cfg_cls, "migrate", None)
    data = migrate(dict(data)) if migrate else dict(data)
    return apply_overrides(cfg_cls() if base is None else base, data)


def nest_fields(data: dict, group: str, names) -> dict:
    """Move top-level ``names`` of a config dict into its nested ``group`` (for ``migrate``)."""
    moved = {k: data.pop(k) for k in list(data) if k in names}
    if moved:
        data[group] = {**moved, **dict(data.get(group) or {})}
    return data


def changed_fields(cfg, base) -> dict[str, Any]:
    """Dotted keys (and JSON-ready values) where ``cfg`` differs from ``base`` of the same class."""
    new, old = to_dict(cfg), to_dict(base)
    out: dict[str, Any] = {}

    def walk(a: dict, b: dict, prefix: str) -> None:
        for key, value in a.items():
            if isinstance(value, dict) and isinstance(b.get(key), dict):
                walk(value, b[key], f"{prefix}{key}.")
            elif value != b.get(key):
                out[prefix + key] = value

    walk(new, old, "")
    return out
