"""VT-ResNet-18 ablations on Fashion-MNIST: tokenizer, projector, transformer, token count, transformer form.

    python benchmarks/ablations.py --epochs 2 --limit-train 10000 --limit-val 2000
    python benchmarks/ablations.py --quick --data-dir D     # smoke test (tiny preset, 1 epoch)

Wu et al. (2020/2021), Tables 3-5: filter vs pooling tokenizer, projector on/off, transformer
vs none, number of tokens L, and (between the two paper versions) the seed vs ICCV form of
the token transformer. Every variant is the recipe `fmnist_vt_resnet18` with one `VTConfig`
field changed; the first row is the default.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RECIPE = "fmnist_vt_resnet18"
VARIANTS = {  # name -> VTConfig fields changed from the preset
    "default (filter, projector, ICCV transformer, L=16)": {},
    "pooling tokenizer": {"tokenizer": "pooling"},
    "no projector": {"projector": False},
    "no transformer": {"transformer": "none"},
    "L=8 tokens": {"num_tokens": 8},
    "L=32 tokens": {"num_tokens": 32},
    "seed-form transformer": {"transformer": "seed"},
}


def _sets(args) -> dict:
    sets = common.budget_overrides(args)
    if args.quick:
        sets.update(common.quick_overrides(), model="vt_resnet_test_small", **{"data.img_size": 16})
    return sets


def run_variant(name: str, vt: dict, args, out: Path) -> dict:
    from vitkit.registry import get_entry
    from vitkit.tools.flops import count_flops

    slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
    per_seed, cfg = [], None
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cfg = common.make_config(RECIPE, {**_sets(args), "seed": seed}, out / "runs" / f"{slug}_s{seed}", vt=vt,
                                 extra=args.set)
        per_seed.append(common.run_training(cfg))
    size = cfg.data.img_size or 28
    model = get_entry(cfg.model_name).cls(dataclasses.replace(cfg.model, img_size=size, in_chans=1, num_classes=10))
    rep = count_flops(model, size, part="vt")
    return {"variant": name, "vt": vt, "model": cfg.model_name, "epochs": cfg.epochs, "params": rep.params,
            "macs": rep.macs, "vt_macs": rep.part_macs, "top1": [r["metrics"]["top1"] for r in per_seed],
            "wall_s": [r["wall_s"] for r in per_seed], "load_mean": [r["load_mean"] for r in per_seed],
            "train_img_per_s": [r["train_img_per_s"] for r in per_seed],
            "command": common.command_line(), "date": common.today()}


def table(rows: list[dict]) -> str:
    base = common.mean_std(rows[0]["top1"])[0]
    headers = ["variant", "VTConfig change", "test top-1 (%)", "vs default (pp)", "VT-part GMACs", "params (M)",
               "train img/s", "load avg"]
    body = [[r["variant"], ", ".join(f"{k}={v}" for k, v in r["vt"].items()) or "-", common.fmt_pm(r["top1"]),
             f"{100 * (common.mean_std(r['top1'])[0] - base):+.2f}", f"{r['vt_macs'] / 1e9:.4f}",
             f"{r['params'] / 1e6:.2f}", f"{common.mean_std(r['train_img_per_s'])[0]:.0f}",
             f"{common.mean_std(r['load_mean'])[0]:.1f}"] for r in rows]
    return common.md_table(headers, body)


def merge(paths: list[str]) -> tuple[list[dict], str]:
    """Rows of earlier runs (OUT/NAME.json files) joined per variant: seeds pooled, in VARIANTS order."""
    import json

    merged, commands = {}, []
    for path in paths:
        data = json.loads(Path(path).read_text())
        commands.append(data["command"])
        for row in data["rows"]:
            into = merged.setdefault(row["variant"], dict(row, top1=[], wall_s=[], load_mean=[], train_img_per_s=[]))
            for key in ("top1", "wall_s", "load_mean", "train_img_per_s"):
                into[key] += row[key]
    return [merged[name] for name in VARIANTS if name in merged], " && ".join(commands)


def main(argv=None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "benchmarks/results")
    p.add_argument("--limit-train", type=int, default=None, help="train on a seeded subset (reduced budget)")
    p.add_argument("--limit-val", type=int, default=None, help="evaluate on a seeded subset of the test split")
    p.add_argument("--only", nargs="*", default=None, help="run only these variant numbers (0 = default)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1")
    p.add_argument("--name", default="ablations", help="file stem of the table in OUT")
    p.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                   help="train nothing: pool the seeds of earlier runs' OUT/NAME.json files into one table")
    args = p.parse_args(argv)
    out = Path(args.out)
    items = list(VARIANTS.items())
    if args.only:
        items = [items[int(i)] for i in args.only]
    command = None
    if args.merge:
        rows, command = merge(args.merge)
    else:
        rows = [run_variant(name, vt, args, out) for name, vt in items]
    common.write_results(out, args.name, "VT-ResNet-18 ablations on Fashion-MNIST", table(rows), {"rows": rows},
                         command=command)
    return rows


if __name__ == "__main__":
    main()
