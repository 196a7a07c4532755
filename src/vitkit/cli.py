"""``vitkit`` command line: a thin dispatcher. Each sub-command lives in ``vitkit.commands``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
User mistakes surface as ``VitkitError`` and are printed as one line (exit code 2).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from vitkit.errors import VitkitError, printable

COMMANDS = ("train", "eval", "predict", "models", "flops", "explain", "export", "bench", "serve", "push")


def _load(name: str):
    return importlib.import_module(f"vitkit.commands.{name.replace('-', '_')}")


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    from vitkit import __version__

    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers: train, evaluate, explain, export, benchmark.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"vitkit.commands.{name}":
                raise
            continue  # a command not built yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wanted = [a for a in argv if a in COMMANDS][:1] or COMMANDS  # import only what runs
    parser = build_parser(COMMANDS if not argv or argv[0] not in COMMANDS else wanted)
    args = parser.parse_args(argv)
    args._argv = argv  # the command as typed (a run records it in its model card)
    try:
        return int(args._run(args) or 0)
    except VitkitError as exc:
        print(f"vitkit {args.command}: error: {printable(str(exc))}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
