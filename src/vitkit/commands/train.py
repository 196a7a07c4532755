"""``vitkit train``: a named recipe + typed ``--set`` overrides -> a run directory."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument

HELP = "train any registered model from a recipe (+ --set overrides); resume with --resume RUN_DIR"


def add_arguments(p) -> None:
    p.add_argument("--recipe", default=None, help="named recipe (default: digits_vit); see --list-recipes")
    p.add_argument("--model", default=None, help="registered model name (overrides the recipe's)")
    p.add_argument("--data", default=None, help="data set: digits, fashion-mnist, imagefolder, seg-canvas, seg-folder")
    p.add_argument("--data-dir", default=None, help="where the data set lives (same as --set data.data_dir=...)")
    p.add_argument("--init", default=None, metavar="SPEC",
                   help="start from pretrained weights: a run or save dir, a checkpoint file, timm:NAME[.TAG] or "
                        "hf:ORG/REPO[@REV] (same as --set init=SPEC); heads, channels and size are adapted")
    add_set_argument(p, "optim.lr=1e-3 model.depth=4 model.vt.num_tokens=8 data.limit_train=512")
    p.add_argument("--out", default=None, help="run directory (default: runs/<recipe>)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (with --resume: extend the run)")
    add_device_option(p, default=None)
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out if it holds a checkpoint (same config), else start it: "
                        "one command for requeued jobs and torchrun --max-restarts")
    p.add_argument("--list-recipes", action="store_true", help="print the recipe names and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def build_config(args):
    """The resolved :class:`RunConfig` from the recipe and the command-line overrides."""
    from vitkit.config import parse_set_args
    from vitkit.engine.recipes import DEFAULT_RECIPE, get_recipe
    from vitkit.engine.run_config import resolve

    overrides = parse_set_args(args.sets)
    for key, value in (("model", args.model), ("data.name", args.data), ("data.data_dir", args.data_dir),
                       ("init", args.init), ("epochs", args.epochs), ("out_dir", args.out), ("device", args.device)):
        if value is not None:
            overrides[key] = value
    return resolve(get_recipe(args.recipe or DEFAULT_RECIPE), overrides)


def resume_config(args):
    from vitkit.engine.run_config import load_run_config, resolve
    from vitkit.errors import VitkitError

    extra = [flag for flag, v in (("--recipe", args.recipe), ("--model", args.model), ("--data", args.data),
                                  ("--init", args.init), ("--set", args.sets), ("--out", args.out)) if v]
    if extra:
        raise VitkitError(f"{', '.join(extra)} cannot be combined with --resume (the run keeps its config); "
                          "only --epochs (extend it) and --device (move it) may change")
    cfg = load_run_config(args.resume)
    overrides = {"out_dir": str(args.resume)}
    for key, value in (("epochs", args.epochs), ("device", args.device)):
        if value is not None:
            overrides[key] = value
    return resolve(cfg, overrides)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _sized_like(cfg, saved):
    """``cfg`` with the sizes the trainer fits to the data (classes, channels, image size) taken
    from the ``saved`` run where this command left them at the preset's values, as training does."""
    import dataclasses

    from vitkit.engine.trainer import fields_set_by_data

    if cfg.model_name != saved.model_name:
        return cfg
    sizes = {key: getattr(saved.model, key) for key in fields_set_by_data(cfg)}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **sizes))


def auto_resume_config(args):
    """(config, resume?) for ``--auto-resume``: the run in --out continues when its saved config
    matches this command's (``epochs`` and ``device`` may differ), else a new run starts."""
    from vitkit.config import to_dict
    from vitkit.engine.checkpoint import has_checkpoint
    from vitkit.engine.run_config import load_run_config, resolve
    from vitkit.engine.trainer import resolve_data_config
    from vitkit.errors import VitkitError

    if args.resume:
        raise VitkitError("use either --resume RUN_DIR or --auto-resume (with --out), not both")
    cfg = build_config(args)
    if not has_checkpoint(cfg.out_dir):
        return cfg, False
    saved = load_run_config(cfg.out_dir)
    want, have = _flat(to_dict(resolve_data_config(_sized_like(cfg, saved)))), _flat(to_dict(saved))
    differ = sorted(k for k in set(want) | set(have)
                    if want.get(k) != have.get(k) and k not in ("epochs", "device", "out_dir"))
    if differ:
        raise VitkitError(f"{cfg.out_dir} holds a run with another config ({', '.join(differ[:5])} differ); "
                          "run the same command, or pick another --out")
    return resolve(saved, {"out_dir": cfg.out_dir, "epochs": cfg.epochs, "device": cfg.device}), True


def run(args) -> int:
    import json

    from vitkit.config import to_dict
    from vitkit.engine.recipes import list_recipes

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    if args.auto_resume:
        cfg, resume = auto_resume_config(args)
    else:
        cfg, resume = (resume_config(args), True) if args.resume else (build_config(args), False)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    import shlex

    from vitkit.engine.trainer import Interrupted, train

    command = shlex.join(["vitkit", *getattr(args, "_argv", [])])
    try:
        metrics = train(cfg, resume=resume, command=command)
    except Interrupted as exc:  # Ctrl-C: 130; SIGTERM / SIGUSR1 (preemption): 75
        print(f"vitkit train: {exc}", flush=True)
        return exc.exit_code
    from vitkit.engine.evaluate import headline

    if metrics is not None:
        label = "mIoU" if "miou" in metrics else "top-1"
        print(f"done: {label} {headline(metrics):.4f}; run directory {cfg.out_dir}")
    return 0
