"""``vitkit eval RUN_DIR_OR_MODEL``: accuracy / mIoU, per-class numbers, confusion matrix."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument, device_of, split_sets

HELP = "evaluate a run dir or saved model: top-1/top-5, per-class accuracy, confusion matrix (mIoU for segmentation)"


def add_arguments(p) -> None:
    p.add_argument("model", metavar="RUN_DIR_OR_MODEL",
                   help="a `vitkit train` run dir, a save_pretrained dir or a hub spec (hf:ORG/REPO, timm:NAME.TAG)")
    p.add_argument("--data", default=None, help="data set name (default: the run's)")
    p.add_argument("--data-dir", default=None, help="data directory (default: the run's)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to evaluate")
    add_set_argument(p, "data.limit_val=500 model.img_size=32 (a key without a prefix is a data key)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None, help="where to write confusion.png and metrics (default: RUN_DIR/plots)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--tta", choices=("none", "hflip", "shift", "flip-shift"), default=None,
                   help="test-time augmentation: hflip predicts from the mean class probabilities of each image "
                        "and its mirror image; shift (classification) from the image and it moved by 1/28 of "
                        "the side left, right, up and down (5 views); flip-shift from both images' 5 views "
                        "(default: the TTA of the run's last evaluation, `final_tta` or else `tta`; none for a "
                        "model dir)")
    add_device_option(p)


def saved_run(args):
    """The training run's config when ``args.model`` is a run dir; None otherwise (a
    save_pretrained dir or a hub spec has none)."""
    from pathlib import Path

    from vitkit.engine.run_config import CONFIG_FILE, load_run_config

    run_dir = Path(args.model)
    is_run = (run_dir / CONFIG_FILE).is_file() and (run_dir / "model" / CONFIG_FILE).is_file()
    return load_run_config(run_dir) if is_run else None


def data_config(args, model, sets: dict[str, str]):
    """The run's data config (if a run dir) with --data and the data --set keys on top, at the
    model's input size."""
    import dataclasses

    from vitkit.config import apply_overrides
    from vitkit.data import DataConfig
    from vitkit.errors import VitkitError

    saved = saved_run(args)
    base = saved.data if saved is not None else None
    if base is None and args.data is None:
        raise VitkitError(f"{args.model} is not a training run dir, so its data set is unknown; pass --data NAME")
    base = dataclasses.replace(base or DataConfig(), augment="none", mixup_alpha=0.0, cutmix_alpha=0.0)
    overrides = dict(sets)
    for key, value in (("name", args.data), ("data_dir", args.data_dir)):
        if value is not None:
            overrides[key] = value
    cfg = apply_overrides(base, overrides, prefix="data.")
    return dataclasses.replace(cfg, img_size=model.config.img_size[0])


def run(args) -> int:
    import json
    import math
    import sys
    from pathlib import Path

    from vitkit.data import build_data
    from vitkit.download import is_hub_spec
    from vitkit.engine.evaluate import eval_loader, evaluate, format_report
    from vitkit.engine.plots import plot_confusion
    from vitkit.errors import VitkitError
    from vitkit.io import make_dir
    from vitkit.registry import create_model, resolve

    device = device_of(args)
    if args.batch_size < 1:
        raise VitkitError(f"--batch-size must be >= 1, got {args.batch_size}")
    source = resolve(args.model)
    if source.weights is None or source.cls is None:
        raise VitkitError(f"{args.model} is not a run dir or a save_pretrained dir; pass the --out of `vitkit train`")
    sets = split_sets(args.sets, ("model", "data"), "data")
    model, model_dir = create_model(source, **sets["model"]).to(device), source.weights.parent
    bundle = build_data(data_config(args, model, sets["data"]), model.preprocess)  # normalised as the model expects
    if (bundle.num_classes, bundle.in_chans) != (model.num_classes, model.in_chans):
        raise VitkitError(f"the model predicts {model.num_classes} classes from {model.in_chans} channels but "
                          f"{bundle.num_classes} / {bundle.in_chans} in the data; "
                          "evaluate on the data it was trained on")
    split = bundle.val if args.split == "val" else bundle.train
    default_out = model_dir.parent / "plots" if model_dir.name == "model" else model_dir / "plots"
    default_out = Path("plots") if is_hub_spec(args.model) else default_out  # not into the hub cache
    out = make_dir(Path(args.out) if args.out else default_out)
    saved = saved_run(args)
    tta = args.tta or (saved.last_tta if saved is not None else "none")
    metrics = evaluate(model, eval_loader(split, args.batch_size), bundle.task, bundle.num_classes, bundle.ignore_index,
                       tta=tta)
    if not math.isfinite(metrics["loss"]):
        raise VitkitError(f"the model's outputs are NaN or inf on this data (loss {metrics['loss']}); "
                          "check its weights and the preprocess values in its config.json")
    if tta != "none":
        print(f"test-time augmentation: {tta}", file=sys.stderr if args.json else sys.stdout)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics, list(bundle.class_names)))
    plot_confusion(metrics["confusion"], list(bundle.class_names), out / f"confusion_{args.split}.png")
    # with --json, stdout holds the JSON document only
    plot_line = f"confusion matrix plot: {out / f'confusion_{args.split}.png'}"
    print(plot_line, file=sys.stderr if args.json else sys.stdout)
    return 0
