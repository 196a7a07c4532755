"""Command-line options that several commands share (one definition each)."""
from __future__ import annotations

from vitkit.config import parse_set_args
from vitkit.errors import VitkitError

DEVICE_HELP = "where to run: auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps"


def add_device_option(p, default: str | None = "auto") -> None:
    """``--device``: the device a command runs on (an unavailable one is a one-line error, exit 2)."""
    shown = f" (default: {default})" if default else " (default: the run's setting, auto for a new run)"
    p.add_argument("--device", default=default, metavar="DEVICE", help=DEVICE_HELP + shown)


def device_of(args):
    """The torch device ``--device`` names; checked, so a missing GPU is a clear VitkitError. On the CPU,
    freed host memory stays in the process unless ``--host-memory default`` (:func:`keep_host_memory`)."""
    from vitkit.engine.device import keep_host_memory, resolve_device

    device = resolve_device(args.device or "auto")
    if device.type == "cpu" and getattr(args, "host_memory", "keep") == "keep":
        keep_host_memory()
    return device


def add_set_argument(parser, example: str = "model.depth=4 model.vt.num_tokens=8") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable, into ``args.sets``; the same in every command
    that builds a model.

    ``model.KEY`` sets a field of the model's config; a dot reaches a nested part's config
    (``model.vt.num_tokens=8``, ``model.backbone.depth=50``). Values are typed and checked against
    the config class; an unknown field is one error naming close matches. ``train`` also takes every
    run-config key (``optim.lr``, ``data.limit_train``). Without a prefix a key belongs to the
    command's main group (:func:`split_sets`): the model for commands that only build one (flops,
    bench, export, explain), the data for ``eval`` (``limit_val=500``).
    """
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"typed config overrides, repeatable (e.g. --set {example})")


def split_sets(pairs, groups: tuple[str, ...], bare: str) -> dict[str, dict[str, str]]:
    """``KEY=VALUE`` strings -> {group: {key without the group prefix: value}}.

    A key starting with ``GROUP.`` for one of ``groups`` goes to that group; any other key
    to the ``bare`` group (so ``vt.num_tokens`` and ``model.vt.num_tokens`` are the same key
    when ``bare`` is ``"model"``). ``model=NAME`` would switch the model, which only ``train``
    does: here it is an error.
    """
    out: dict[str, dict[str, str]] = {g: {} for g in groups}
    for key, value in parse_set_args(pairs).items():
        head, _, rest = key.partition(".")
        if key in groups:
            raise VitkitError(f"'{key}' is a group; set its fields as {key}.NAME=VALUE"
                              + (" (the model itself is the command's first argument)" if key == "model" else ""))
        group, field = (head, rest) if head in groups and rest else (bare, key)
        out[group][field] = value
    return out


def model_sets(args) -> dict[str, str]:
    """The model-config overrides of a command that only builds a model (``model.`` optional)."""
    return split_sets(args.sets, ("model",), "model")["model"]
