"""VT-ResNet-18 vs ResNet-18 (small-image variants) under one recipe: accuracy, FLOPs, params, images/s.

    python benchmarks/vt_vs_resnet.py --data digits --seeds 2
    python benchmarks/vt_vs_resnet.py --data fmnist --seeds 2 --epochs 2 --limit-train 12000
    python benchmarks/vt_vs_resnet.py --quick --data-dir D    # smoke test (tiny presets, 1 epoch)

Wu et al. (2020/2021), Table 2: VT-ResNet-18 beats ResNet-18 with fewer FLOPs. Both models
here share the recipe (optimizer, schedule, augmentation, batch, epochs); only the model differs.
FLOPs are multiply-adds per image (`vitkit flops`, GMACs = what the papers call FLOPs).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PAIRS = {"digits": ("digits_resnet18", "digits_vt_resnet18"), "fmnist": ("fmnist_resnet18", "fmnist_vt_resnet18")}
QUICK_MODELS = {"resnet18_28": "resnet_test_small", "vt_resnet18_28": "vt_resnet_test_small"}


def model_cost(cfg) -> dict:
    """Parameters and multiply-adds per image of the exact model trained (classes, size from the data)."""
    from vitkit.data import build_data
    from vitkit.engine.trainer import build_model, resolve_data_config
    from vitkit.tools.flops import count_flops

    cfg = resolve_data_config(cfg)
    model = build_model(cfg, build_data(cfg.data))
    rep = count_flops(model, cfg.data.img_size, part=None)
    return {"params": rep.params, "macs": rep.macs}


def add_speed(rows: list[dict], args) -> None:
    """Interleaved training images/s (bs 64, 1 thread) of each pair, added to the rows."""
    from vitkit.registry import create_model

    for data in dict.fromkeys(r["data"] for r in rows):
        pair = [r for r in rows if r["data"] == data]
        size = 16 if args.quick or data == "digits" else 28
        models = {r["model"]: create_model(r["model"], img_size=size, in_chans=1, num_classes=10) for r in pair}
        speed = common.train_speed(models, 16 if args.quick else 64, size, 1, rounds=1 if args.quick else 3)
        for r in pair:
            r["bench_img_per_s"] = speed[r["model"]]


def run_pair(data: str, args, out: Path) -> list[dict]:
    rows = []
    for recipe in PAIRS[data]:
        sets = {**_sets(args, data), **({"data.img_size": 16} if args.quick else {})}
        per_seed = []
        for seed in range(args.seeds):
            cfg = common.make_config(recipe, {**sets, "seed": seed}, out / "runs" / f"{recipe}_s{seed}", extra=args.set)
            if args.quick:
                cfg = common.make_config(recipe, {**sets, "seed": seed, "model": QUICK_MODELS[cfg.model_name]},
                                         Path(cfg.out_dir), extra=args.set)
            per_seed.append(common.run_training(cfg))
        rows.append({"data": data, "recipe": recipe, "model": cfg.model_name, "epochs": cfg.epochs,
                     "train_images": _train_images(cfg), **model_cost(cfg),
                     "top1": [r["metrics"]["top1"] for r in per_seed],
                     "train_img_per_s": [r["train_img_per_s"] for r in per_seed],
                     "wall_s": [r["wall_s"] for r in per_seed], "load_mean": [r["load_mean"] for r in per_seed],
                     "threads": cfg.threads})
    return rows


def _train_images(cfg) -> int:
    from vitkit.data import build_data

    return len(build_data(cfg.data).train)


def _sets(args, data: str) -> dict:
    sets = {}
    if data == "fmnist" and args.data_dir:
        sets["data.data_dir"] = args.data_dir
    if args.epochs:
        sets["epochs"] = args.epochs
    if args.threads is not None:
        sets["threads"] = args.threads
    if args.limit_train:
        sets["data.limit_train"] = args.limit_train
    if args.quick:
        sets.update(common.quick_overrides())
    return sets


def tables(rows: list[dict]) -> str:
    headers = ["data", "model", "epochs", "train images", "test top-1 (%) mean ± std", "GMACs / image",
               "params (M)", "train img/s (interleaved)", "train img/s (in run)", "wall s / run", "threads", "load avg"]
    body = [[r["data"], r["model"], r["epochs"], r["train_images"], common.fmt_pm(r["top1"]),
             f"{r['macs'] / 1e9:.3f}", f"{r['params'] / 1e6:.2f}", f"{r.get('bench_img_per_s', float('nan')):.0f}",
             f"{common.mean_std(r['train_img_per_s'])[0]:.0f}",
             f"{common.mean_std(r['wall_s'])[0]:.0f}", r["threads"] or "default",
             f"{common.mean_std(r['load_mean'])[0]:.1f}"] for r in rows]
    claim = []
    for data in dict.fromkeys(r["data"] for r in rows):
        base, vt = [r for r in rows if r["data"] == data][:2]
        d_acc = 100 * (common.mean_std(vt["top1"])[0] - common.mean_std(base["top1"])[0])
        ratio = vt["macs"] / base["macs"]
        holds = d_acc > 0 and ratio < 1
        claim.append([data, f"{d_acc:+.2f}", f"{ratio:.2f}x", "yes" if holds else "no"])
    claim_t = common.md_table(["data", "VT - ResNet top-1 (pp)", "VT / ResNet MACs", "higher accuracy at fewer FLOPs"],
                              claim)
    return common.md_table(headers, body) + "\n\n" + claim_t


def main(argv=None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "benchmarks/results")
    p.add_argument("--data", choices=["digits", "fmnist", "both"], default="digits")
    p.add_argument("--limit-train", type=int, default=None, help="train on a seeded subset (reduced budget)")
    p.add_argument("--speed-only", action="store_true", help="re-measure images/s into an existing OUT/NAME.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    name = "vt_vs_resnet_" + args.data
    datasets = ["digits", "fmnist"] if args.data == "both" else [args.data]
    command = None
    if args.speed_only:
        old = json.loads((out / f"{name}.json").read_text())
        rows, command = old["rows"], old["command"].split(" && ")[0] + " && " + common.command_line()
    else:
        rows = [row for data in datasets for row in run_pair(data, args, out)]
    add_speed(rows, args)
    common.write_results(out, name, "VT-ResNet-18 vs ResNet-18 (same recipe and epochs)", tables(rows), {"rows": rows},
                         command=command)
    return rows


if __name__ == "__main__":
    main()
