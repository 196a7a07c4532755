"""One way in: :func:`create_model` builds a model from a *spec*.

    create_model("vit_tiny_patch16_224")              a registered name: fresh weights
    create_model("my_vit")                            a save_pretrained dir: config, weights, metadata
    create_model("runs/digits")                       a `vitkit train` run dir (its model/ subdir)
    create_model("vit_test", pretrained="my_vit")     architecture from the name, weights from a spec

A spec resolves to a :class:`ModelSource` (model class, config, weights file, saved metadata)
through :data:`RESOLVERS`, tried in order; a new kind of spec is one more resolver there.
The presets themselves live in :mod:`vitkit.models.catalog`; importing the families below
fills it.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vitkit.models  # noqa: F401  (importing the families registers every preset)
from vitkit.config import apply_overrides, close_matches, from_dict
from vitkit.errors import VitkitError
from vitkit.models.catalog import (
    ModelEntry,
    family_class,
    get_config,
    get_entry,
    is_registered,
    list_models,
    register_family,
    register_model,
    register_presets,
)
from vitkit.models.features import FeatureExtractor
from vitkit.models.hub import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_class_names,
    is_pretrained_dir,
    load_weights,
    read_metadata,
)
from vitkit.preprocess import Preprocess

__all__ = ["ModelEntry", "ModelSource", "RESOLVERS", "create_model", "family_class", "get_config", "get_entry",
           "list_models", "register_family", "register_model", "register_presets", "resolve"]


@dataclass(frozen=True)
class ModelSource:
    """What a spec names: the model class and config (None for bare weights), the weights file
    (None: fresh initialisation) and the metadata saved with them (preprocess, class_names)."""

    spec: str
    cls: type | None
    config: Any
    weights: Path | None = None
    meta: dict = field(default_factory=dict)


def _model_dir(spec) -> ModelSource | None:
    """A ``save_pretrained`` dir, or a ``vitkit train`` run dir (it holds one in ``model/``)."""
    path = Path(spec)
    if is_pretrained_dir(path / "model"):  # a run dir (it has its own run config.json too)
        path = path / "model"
    elif not is_pretrained_dir(path):
        return None
    meta = read_metadata(path)
    cls = family_class(meta["family"])
    try:
        config = from_dict(cls.config_cls, meta["config"])
    except VitkitError as exc:
        raise VitkitError(f"cannot read model config {path / CONFIG_NAME}: {exc}") from None
    return ModelSource(str(spec), cls, config, path / WEIGHTS_NAME, meta)


def _weights_file(spec) -> ModelSource | None:
    """A bare ``.safetensors`` file: weights without a config (use it as ``pretrained=``)."""
    path = Path(spec)
    return ModelSource(str(spec), None, None, path) if path.suffix == ".safetensors" and path.is_file() else None


def _registered_name(spec) -> ModelSource | None:
    if not isinstance(spec, str) or not is_registered(spec):
        return None
    entry = get_entry(spec)
    return ModelSource(spec, entry.cls, entry.config)


RESOLVERS: tuple[Callable[[Any], ModelSource | None], ...] = (_model_dir, _weights_file, _registered_name)


def _unresolved(spec) -> VitkitError:
    text, path = str(spec), Path(spec)
    if path.is_dir():
        return VitkitError(f"{text} is a folder but not a model: it has neither config.json (a save_pretrained dir) "
                           "nor model/config.json (a run dir)")
    if path.exists():
        return VitkitError(f"{text} is not a model file; pass a save_pretrained dir, a run dir or a .safetensors file")
    if isinstance(spec, Path) or any(sep in text for sep in ("/", "\\")):
        return VitkitError(f"path not found: {text}; it is not a run dir, a save_pretrained dir or a model name")
    return VitkitError(f"unknown model '{text}'{close_matches(text, list_models())}; run `vitkit models` to list "
                       "them, or pass a save_pretrained dir or a run dir")


def resolve(spec) -> ModelSource:
    """The :class:`ModelSource` for ``spec`` (a name, a path or an already resolved source)."""
    if isinstance(spec, ModelSource):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise VitkitError(f"a model spec is a name or a path, got {type(spec).__name__} {spec!r}")
    for resolver in RESOLVERS:
        source = resolver(spec)
        if source is not None:
            return source
    raise _unresolved(spec)


def create_model(spec, pretrained=None, features_only: bool = False, out_indices=None, **overrides):
    """Build the model ``spec`` names, with config ``overrides``, and load its weights.

    ``spec``: a registered name, a ``save_pretrained`` dir or a ``vitkit train`` run dir
    (see :data:`RESOLVERS`). ``pretrained``: weights for the architecture ``spec`` names,
    from a save_pretrained dir, a run dir or a ``.safetensors`` file. Loaded weights are
    checked strictly (positional embeddings are resampled to another ``img_size``), and
    the model carries the metadata saved with them: ``model.preprocess`` (at the model's
    own input size) and ``model.class_names``.

    ``features_only``: return a :class:`~vitkit.models.features.FeatureExtractor` of the loaded
    model instead, whose forward gives the NCHW maps of the ``out_indices`` layers (None: every
    layer in ``feature_info``); the layers after the last of them and the head are dropped.
    """
    if out_indices is not None and not features_only:
        raise VitkitError("out_indices selects the maps of a feature extractor; pass features_only=True with it")
    source = resolve(spec)
    if source.cls is None:
        raise VitkitError(f"{source.spec} holds weights but no config; "
                          f"pass a model name and pretrained={source.spec!r}")
    weights = source if pretrained is None else resolve(pretrained)
    if pretrained is not None and weights.weights is None:
        raise VitkitError(f"pretrained={weights.spec!r} holds no weights; pass a save_pretrained dir, a run dir "
                          "or a .safetensors file")
    model = source.cls(apply_overrides(source.config, overrides))
    if weights.weights is not None:
        _carry_metadata(model, _load_verified(model, weights))
    return FeatureExtractor(model, out_indices) if features_only else model


def _load_verified(model, source: ModelSource) -> dict:
    """Load ``source``'s weights into ``model``, checked against the SHA-256 its config.json
    records; its metadata. A save that replaced the weights between our reads of config.json
    and model.safetensors (a training run publishing an epoch) is read again, once."""
    try:
        load_weights(model, source.weights, source.meta.get("weights_sha256"))
        return source.meta
    except VitkitError:
        if not source.meta or not is_pretrained_dir(source.weights.parent):
            raise
        fresh = read_metadata(source.weights.parent)
        if fresh.get("weights_sha256") == source.meta.get("weights_sha256"):
            raise
    load_weights(model, source.weights, fresh.get("weights_sha256"))
    return fresh


def _carry_metadata(model, meta: dict) -> None:
    """Saved preprocess (at the model's input size and channels) and class names -> the model."""
    saved = meta.get("preprocess") or {}
    if not isinstance(saved, dict):
        raise VitkitError(f"'preprocess' in the model's config.json must be an object, got {saved!r}")
    saved = {**saved, "img_size": model.config.img_size, "in_chans": model.config.in_chans}
    model.preprocess = Preprocess.from_dict(saved, model.config)
    names = meta.get("class_names")
    check_class_names(names, model.num_classes, "the model's config.json")
    task = meta.get("task")
    if task is not None and task != model.task:
        raise VitkitError(f"the model's config.json says task '{task}' but a {type(model).__name__} does {model.task}; "
                          "fix 'task' or remove it")
    model.class_names = list(names) if names else None
