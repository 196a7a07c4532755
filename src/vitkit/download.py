"""Hub specs -> a folder in huggingface_hub's cache.

    timm:NAME[.TAG]            the repo timm publishes, ``timm/NAME.TAG``
    hf:ORG/REPO[@REVISION]     any model repo (a vitkit model or a transformers ViT)

The files a model needs (``config.json``, the image processor's config, the weights) come
with ``huggingface_hub.hf_hub_download`` into its standard cache (``HF_HUB_CACHE``, by
default ``~/.cache/huggingface/hub``). With ``HF_HUB_OFFLINE=1`` they are served from that
cache and nothing is downloaded. Which kind of model the folder holds is read from its
config.json by :func:`vitkit.create_model`, not here.
"""
from __future__ import annotations

from pathlib import Path

from vitkit.errors import VitkitError

HUB_PREFIXES = ("timm:", "hf:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
OPTIONAL_FILES = ("preprocessor_config.json",)


def is_hub_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(HUB_PREFIXES)


def hub_repo(spec: str) -> tuple[str, str | None]:
    """``timm:NAME.TAG`` / ``hf:ORG/REPO@REV`` -> (repo id, revision or None)."""
    kind, _, rest = spec.partition(":")
    if kind == "timm":
        if not rest or "/" in rest or "@" in rest:
            raise VitkitError(f"bad timm spec '{spec}'; write timm:NAME or timm:NAME.TAG (e.g. "
                              "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k)")
        return f"timm/{rest if '.' in rest else _default_timm_tag(rest)}", None
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")) or (revision == "" and "@" in rest):
        raise VitkitError(f"bad Hugging Face spec '{spec}'; write hf:ORG/REPO or hf:ORG/REPO@REVISION")
    return repo, revision or None


def _default_timm_tag(name: str) -> str:
    """``NAME.TAG`` of timm's default weights for ``NAME``: from timm if installed, else the one
    tag of ``NAME`` in the local cache."""
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            raise VitkitError(f"timm has no pretrained weights named '{name}' on the Hub; "
                              "run `timm.list_pretrained()` for the names")
        return cfg.hf_hub_id.removeprefix("timm/")
    cached = sorted(p.name.removeprefix("models--timm--") for p in _cache_dir().glob(f"models--timm--{name}.*"))
    if len(cached) == 1:
        return cached[0]
    raise VitkitError(f"timm:{name} has no tag and timm is not installed to name the default one; "
                      f"write timm:{name}.TAG (the repo name after 'timm/' on the Hub)"
                      + (f"; cached: {', '.join(cached)}" if cached else ""))


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def fetch(spec: str) -> Path:
    """Download (or find in the cache) the model files of a hub spec; the snapshot folder."""
    repo, revision = hub_repo(spec)
    config = _download(spec, repo, "config.json", revision)
    for name in OPTIONAL_FILES:
        _download(spec, repo, name, revision, required=False)
    for name in WEIGHT_FILES:
        if _download(spec, repo, name, revision, required=False) is not None:
            break
    else:
        raise VitkitError(f"{spec}: the repo {repo} has none of {', '.join(WEIGHT_FILES)} (or they are not in the "
                          "local cache); it holds no weights vitkit reads")
    return config.parent


def _download(spec: str, repo: str, filename: str, revision: str | None, required: bool = True) -> Path | None:
    """One file of ``repo`` into the cache; None for a missing optional file."""
    from huggingface_hub import hf_hub_download  # imported on use: it adds ~0.5 s to every start
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except RepositoryNotFoundError:
        raise VitkitError(f"{spec}: no model repo {repo} on the Hub, or it is private or gated (log in with "
                          "`hf auth login`, or set HF_TOKEN); check the name") from None
    except RevisionNotFoundError:
        raise VitkitError(f"{spec}: the repo {repo} has no revision '{revision}'; check the branch, tag or "
                          "commit after '@'") from None
    except LocalEntryNotFoundError:
        if not required:
            return None
        raise VitkitError(f"{spec}: {filename} of {repo} is not in the local Hugging Face cache ({_cache_dir()}) "
                          "and the Hub cannot be reached (no network, or HF_HUB_OFFLINE=1); run once online "
                          "to download it") from None
    except EntryNotFoundError:
        if not required:
            return None
        raise VitkitError(f"{spec}: the repo {repo} has no {filename}; it is not a model vitkit reads") from None
    except (HfHubHTTPError, OSError) as exc:
        raise VitkitError(f"{spec}: cannot download {filename} from {repo}: {str(exc).splitlines()[0]}") from None
