"""``vitkit predict RUN_DIR IMAGES...``: top-k labels with probabilities."""
from __future__ import annotations

import sys

from vitkit.commands.options import add_device_option, device_of

HELP = "top-k predictions for images (files, folders or globs) with a trained model"


def add_arguments(p) -> None:
    p.add_argument("model", metavar="RUN_DIR", help="a `vitkit train` run dir or a save_pretrained dir")
    p.add_argument("images", nargs="+", help="image files, folders or globs (quote globs)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_option(p)


def run(args) -> int:
    from vitkit.engine.predict import expand_inputs, format_predictions, predict_files
    from vitkit.errors import VitkitError, printable
    from vitkit.registry import create_model, resolve

    device = device_of(args)
    if args.top_k < 1:
        raise VitkitError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise VitkitError(f"--batch-size must be >= 1, got {args.batch_size}")
    source = resolve(args.model)
    if source.weights is None or source.cls is None:
        raise VitkitError(f"{args.model} is not a run dir or a save_pretrained dir; pass the --out of `vitkit train`")
    model = create_model(source).to(device)
    files, failures = expand_inputs(args.images)
    results, more = predict_files(model, files, args.top_k, args.batch_size)
    failures += more
    if results:
        print(format_predictions(results, args.format))
    for f in failures:
        message = f.error if f.path in f.error else f"{f.path}: {f.error}"
        print(f"vitkit predict: error: {printable(message)}", file=sys.stderr)
    if failures:
        print(f"vitkit predict: {len(failures)} of {len(failures) + len(results)} inputs failed", file=sys.stderr)
        return 1
    return 0
