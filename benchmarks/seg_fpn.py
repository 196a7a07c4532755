"""VT-FPN vs FPN on the seg-canvas task (same ResNet-18 backbone, same recipe): mIoU, pixel accuracy, FLOPs.

    python benchmarks/seg_fpn.py --seeds 1 --epochs 3 --limit-train 2000
    python benchmarks/seg_fpn.py --quick --data-dir D      # smoke test (tiny presets, 32 px canvases)

Wu et al. (2020/2021), Table 6: VT-FPN matches or beats FPN's mIoU with several times fewer
neck FLOPs. FLOPs are multiply-adds per image (`vitkit flops`, part `neck`).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RECIPES = ("seg_canvas_fpn", "seg_canvas_vt_fpn")
QUICK_MODELS = {"fpn_resnet18_64": "fpn_test", "vt_fpn_resnet18_64": "vt_fpn_test"}


def model_cost(cfg) -> dict:
    """Whole-model and neck multiply-adds per image of the model as trained (11 classes)."""
    from vitkit.registry import get_entry
    from vitkit.tools.flops import count_flops

    size = cfg.data.img_size or cfg.data.canvas_size
    model = get_entry(cfg.model_name).cls(dataclasses.replace(cfg.model, num_classes=11, in_chans=1, img_size=size))
    rep = count_flops(model, cfg.data.img_size or cfg.data.canvas_size, part="neck")
    return {"params": rep.params, "macs": rep.macs, "neck_macs": rep.part_macs, "neck_params": rep.part_params}


def _sets(args) -> dict:
    sets = common.budget_overrides(args)
    if args.quick:
        sets.update(common.quick_overrides(64, 32), **{"data.canvas_size": 32, "batch_size": 16})
    return sets


def run_one(recipe: str, args, out: Path) -> dict:
    per_seed, cfg = [], None
    for seed in range(args.seeds):
        sets = {**_sets(args), "seed": seed}
        cfg = common.make_config(recipe, sets, out / "runs" / f"{recipe}_s{seed}", extra=args.set)
        if args.quick:
            sets["model"] = QUICK_MODELS[cfg.model_name]
            cfg = common.make_config(recipe, sets, Path(cfg.out_dir), extra=args.set)
        per_seed.append(common.run_training(cfg))
    return {"recipe": recipe, "model": cfg.model_name, "epochs": cfg.epochs, "threads": cfg.threads,
            "train_canvases": cfg.data.limit_train or cfg.data.canvas_train_size,
            "val_canvases": cfg.data.limit_val or cfg.data.canvas_val_size, **model_cost(cfg),
            "miou": [r["metrics"]["miou"] for r in per_seed],
            "pixel_acc": [r["metrics"]["pixel_acc"] for r in per_seed],
            "train_img_per_s": [r["train_img_per_s"] for r in per_seed], "wall_s": [r["wall_s"] for r in per_seed],
            "load_mean": [r["load_mean"] for r in per_seed], "command": common.command_line(), "date": common.today()}


def tables(rows: list[dict]) -> str:
    headers = ["model", "epochs", "train / val canvases", "mIoU (%)", "pixel acc (%)", "neck GMACs", "model GMACs",
               "params (M)", "train img/s", "wall s / run", "load avg"]
    body = [[r["model"], r["epochs"], f"{r['train_canvases']} / {r['val_canvases']}", common.fmt_pm(r["miou"]),
             common.fmt_pm(r["pixel_acc"]), f"{r['neck_macs'] / 1e9:.4f}", f"{r['macs'] / 1e9:.3f}",
             f"{r['params'] / 1e6:.2f}", f"{common.mean_std(r['train_img_per_s'])[0]:.0f}",
             f"{common.mean_std(r['wall_s'])[0]:.0f}", f"{common.mean_std(r['load_mean'])[0]:.1f}"] for r in rows]
    fpn, vt = rows
    d_miou = 100 * (common.mean_std(vt["miou"])[0] - common.mean_std(fpn["miou"])[0])
    ratio = fpn["neck_macs"] / max(vt["neck_macs"], 1)
    holds = d_miou >= 0 and ratio > 1
    claim = common.md_table(
        ["VT-FPN - FPN mIoU (pp)", "FPN / VT-FPN neck MACs", "equal or better mIoU at fewer neck FLOPs"],
        [[f"{d_miou:+.2f}", f"{ratio:.1f}x", "yes" if holds else "no"]])
    return common.md_table(headers, body) + "\n\n" + claim


def main(argv=None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "benchmarks/results")
    p.add_argument("--limit-train", type=int, default=None, help="training canvases (reduced budget)")
    p.add_argument("--limit-val", type=int, default=None, help="validation canvases")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = [run_one(recipe, args, out) for recipe in RECIPES]
    common.write_results(out, "seg_fpn", "VT-FPN vs FPN on seg-canvas (ResNet-18 backbone, 64 px, 11 classes)",
                         tables(rows), {"rows": rows})
    return rows


if __name__ == "__main__":
    main()
