"""Command-line options that several commands share (one definition each)."""
from __future__ import annotations

DEVICE_HELP = "where to run: auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps"


def add_device_option(p, default: str | None = "auto") -> None:
    """``--device``: the device a command runs on (an unavailable one is a one-line error, exit 2)."""
    shown = f" (default: {default})" if default else " (default: the run's setting, auto for a new run)"
    p.add_argument("--device", default=default, metavar="DEVICE", help=DEVICE_HELP + shown)


def device_of(args):
    """The torch device ``--device`` names; checked, so a missing GPU is a clear VitkitError."""
    from vitkit.engine.device import resolve_device

    return resolve_device(args.device or "auto")
