"""One way in: :func:`create_model` builds a model from a *spec*.

    create_model("vit_tiny_patch16_224")                 a registered name: fresh weights
    create_model("my_vit")                               a save_pretrained dir: config, weights, metadata
    create_model("runs/digits")                          a `vitkit train` run dir (its model/ subdir)
    create_model("hf:ORG/REPO")                          a Hugging Face repo: a vitkit model or a transformers ViT
    create_model("timm:vit_tiny_patch16_224.augreg_in21k")   timm's published weights
    create_model("vit_test", pretrained="ckpt.pth")      architecture from the name, weights from a spec

Pretrained specs: a save_pretrained or run dir, a folder as timm or transformers save it, a
checkpoint file (``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` read with
``torch.load(weights_only=True)``) in vitkit's, timm's or transformers' format, or a hub spec
(``timm:NAME[.TAG]``, ``hf:ORG/REPO[@REVISION]``, fetched into huggingface_hub's cache).

A spec resolves to a :class:`ModelSource` (model class, config, weights file, saved metadata)
through :data:`RESOLVERS`, tried in order; a new kind of spec is one more resolver there.
Weights that differ from the model built (classes, channels, image size) are adapted
(:mod:`vitkit.models.adapt`) and the change is reported in one line on stderr.
The presets themselves live in :mod:`vitkit.models.catalog`; importing the families below
fills it.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vitkit.models  # noqa: F401  (importing the families registers every preset)
from vitkit.config import apply_overrides, close_matches
from vitkit.convert.checkpoint import CHECKPOINT_SUFFIXES, read_checkpoint, read_folder, to_vitkit
from vitkit.download import fetch, is_hub_spec
from vitkit.errors import VitkitError
from vitkit.models.adapt import adapt_weights
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
from vitkit.models.hub import check_class_names, check_state_dict, is_pretrained_dir, read_metadata
from vitkit.preprocess import Preprocess

__all__ = ["ModelEntry", "ModelSource", "RESOLVERS", "create_model", "family_class", "get_config", "get_entry",
           "list_models", "load_into", "pretrained_preprocess", "register_family", "register_model",
           "register_presets", "resolve"]


@dataclass(frozen=True)
class ModelSource:
    """What a spec names: the model class and config (None for bare weights), the weights file
    (None: fresh initialisation), the metadata saved with them (preprocess, class_names) and
    the weights' key layout (``vitkit``, ``timm``, ``transformers``; None: told by the keys)."""

    spec: str
    cls: type | None
    config: Any
    weights: Path | None = None
    meta: dict = field(default_factory=dict)
    format: str | None = "vitkit"


def _hub(spec) -> ModelSource | None:
    """``timm:NAME[.TAG]`` or ``hf:ORG/REPO[@REVISION]``: the repo's folder in the hub cache."""
    if not is_hub_spec(spec):
        return None
    source = _model_dir(fetch(spec), spec)
    if source is None:
        raise VitkitError(f"{spec}: the downloaded folder has no config.json; it is not a model vitkit reads")
    return source


def _model_dir(spec, name: str | None = None) -> ModelSource | None:
    """A folder with a config.json (vitkit's save_pretrained, timm's or transformers' layout),
    or a ``vitkit train`` run dir (it holds one in ``model/``)."""
    path = Path(spec)
    if is_pretrained_dir(path / "model"):  # a run dir (it has its own run config.json too)
        path = path / "model"
    elif not is_pretrained_dir(path):
        return None
    found = read_folder(path)
    return ModelSource(name or str(spec), found.cls, found.config, found.weights, found.meta, found.format)


def _weights_file(spec) -> ModelSource | None:
    """A checkpoint file: weights without a config (use it as ``pretrained=``), format told by its keys."""
    path = Path(spec)
    if path.suffix in CHECKPOINT_SUFFIXES and path.is_file():
        return ModelSource(str(spec), None, None, path, format=None)
    return None


def _registered_name(spec) -> ModelSource | None:
    if not isinstance(spec, str) or not is_registered(spec):
        return None
    entry = get_entry(spec)
    return ModelSource(spec, entry.cls, entry.config)


RESOLVERS: tuple[Callable[[Any], ModelSource | None], ...] = (_hub, _model_dir, _weights_file, _registered_name)


def _unresolved(spec) -> VitkitError:
    text, path = str(spec), Path(spec)
    if path.is_dir():
        return VitkitError(f"{text} is a folder but not a model: it has neither config.json (a save_pretrained dir) "
                           "nor model/config.json (a run dir)")
    if path.exists():
        return VitkitError(f"{text} is not a model file; pass a save_pretrained dir, a run dir or a checkpoint "
                           f"({', '.join(CHECKPOINT_SUFFIXES)})")
    if isinstance(spec, Path) or any(sep in text for sep in ("/", "\\")):
        return VitkitError(f"path not found: {text}; it is not a run dir, a save_pretrained dir or a model name")
    return VitkitError(f"unknown model '{text}'{close_matches(text, list_models())}; run `vitkit models` to list "
                       "them, or pass a save_pretrained dir, a run dir, a checkpoint file, timm:NAME or hf:ORG/REPO")


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

    ``spec``: a registered name, a model folder, a run dir or a hub spec (see
    :data:`RESOLVERS`). ``pretrained``: weights for the architecture ``spec`` names, from any
    of those or a checkpoint file. Weights are converted from timm's or transformers' layout
    and adapted where the model differs (new head(s) for other ``num_classes``, none for 0;
    the first convolution for other ``in_chans``; E_pos for other ``img_size``); every other
    tensor must fit exactly. An adaptation is reported in one line on stderr and kept as
    ``model.adaptation``. The model carries the metadata saved with the weights:
    ``model.preprocess`` (at the model's own input size and channels) and ``model.class_names``.
    vitkit's own weights are checked against the SHA-256 their config.json records.

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
        raise VitkitError(f"pretrained={weights.spec!r} holds no weights; pass a save_pretrained dir, a run dir, "
                          "a checkpoint file, timm:NAME or hf:ORG/REPO")
    model = source.cls(apply_overrides(source.config, overrides))
    if weights.weights is not None:
        _carry_metadata(model, _load_verified(model, weights))
    return FeatureExtractor(model, out_indices) if features_only else model


def _load_verified(model, source: ModelSource) -> ModelSource:
    """:func:`load_pretrained`; a vitkit save that replaced the weights between our reads of
    config.json and model.safetensors (a training run publishing an epoch) is read again, once.
    Returns the source as finally read."""
    try:
        load_pretrained(model, source)
        return source
    except VitkitError:
        if source.format != "vitkit" or not source.meta or not is_pretrained_dir(source.weights.parent):
            raise
        fresh = read_metadata(source.weights.parent)
        if fresh.get("weights_sha256") == source.meta.get("weights_sha256"):
            raise
    source = dataclasses.replace(source, meta=fresh)
    load_pretrained(model, source)
    return source


def load_pretrained(model, source: ModelSource) -> None:
    """Read (vitkit's own weights checked against their SHA-256), convert, adapt and strictly
    load ``source``'s weights into ``model``."""
    sha256 = source.meta.get("weights_sha256") if source.format == "vitkit" else None
    state = read_checkpoint(source.weights, sha256)
    state = to_vitkit(state, model, source.format, source.config if source.cls is type(model) else None)
    state, report = adapt_weights(model, state)
    check_state_dict(model, state, source.spec)
    model.load_state_dict(state, strict=True)
    model.adaptation = report
    if report:
        print(report.line(source.spec), file=sys.stderr)


def load_into(model, spec) -> None:
    """Load the weights ``spec`` names into a built ``model`` (``vitkit train --init``): converted,
    adapted and reported as in :func:`create_model`, with the saved metadata."""
    source = resolve(spec)
    if source.weights is None:
        raise VitkitError(f"{source.spec} holds no weights; pass a save_pretrained dir, a run dir, a checkpoint "
                          "file, timm:NAME or hf:ORG/REPO")
    _carry_metadata(model, _load_verified(model, source))


def pretrained_preprocess(spec) -> Preprocess | None:
    """The preprocessing saved with the weights ``spec`` names (its config's size and channels);
    None for a bare checkpoint file, which carries none."""
    source = resolve(spec)
    if source.weights is None:
        raise VitkitError(f"{source.spec} holds no weights; pass a save_pretrained dir, a run dir, a checkpoint "
                          "file, timm:NAME or hf:ORG/REPO")
    if source.config is None:
        return None
    return _saved_preprocess(source)


def _saved_preprocess(source: ModelSource) -> Preprocess:
    saved = source.meta.get("preprocess") or {}
    if not isinstance(saved, dict):
        raise VitkitError(f"'preprocess' in the model's config.json must be an object, got {saved!r}")
    return Preprocess.from_dict(saved, source.config)


def _carry_metadata(model, source: ModelSource) -> None:
    """Saved preprocess (made to the model's input size and channels) and class names -> the model."""
    pre = _saved_preprocess(source) if source.config is not None else Preprocess.for_config(model.config)
    model.preprocess = pre.adapted(img_size=model.config.img_size, in_chans=model.config.in_chans)
    names = source.meta.get("class_names")
    if names is not None and len(names) != model.num_classes and model.adaptation:
        names = None  # a new head: the saved names name other classes
    check_class_names(names, model.num_classes, "the model's config.json")
    task = source.meta.get("task")
    if task is not None and task != model.task:
        raise VitkitError(f"the model's config.json says task '{task}' but a {type(model).__name__} does {model.task}; "
                          "fix 'task' or remove it")
    model.class_names = list(names) if names else None
