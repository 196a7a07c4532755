"""Training throughput used to size the recipes: models x threads x precision, measured interleaved.

    python benchmarks/throughput.py            # 28 px Fashion-MNIST-sized batches, 3 rounds
    python benchmarks/throughput.py --quick    # tiny models, 1 round (smoke test)

Each configuration runs a few AdamW steps on a random batch in turn (A, B, C, ..., A, B, C, ...),
so load from other jobs on a shared machine spreads over all of them; the median round is reported.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_VIT = dict(class_token=False, global_pool="avg", mlp_ratio=2.0)
CONFIGS = [  # label, model, overrides, threads, precision
    ("vit_tiny_convstem7_28 (fmnist_vit_fast)", "vit_tiny_convstem7_28", {}, 2, "fp32"),
    ("vit_tiny_convstem_28 (3-conv ViT_C stem)", "vit_tiny_convstem_28", {}, 2, "fp32"),
    ("vit_tiny_convstem_28 (3-conv ViT_C stem)", "vit_tiny_convstem_28", {}, 1, "fp32"),
    ("vit_tiny_convstem_28 (3-conv ViT_C stem)", "vit_tiny_convstem_28", {}, 1, "bf16"),
    ("vit_tiny_patch7_28 (patch 7, 16 tokens)", "vit_tiny_patch7_28", {}, 2, "fp32"),
    ("patch 4, 128 wide, 4 deep (49 tokens)", "vit_mini_patch4_28", dict(_VIT, embed_dim=128, depth=4, num_heads=4), 2,
     "fp32"),
    ("conv stem (32, 64) to 49 tokens, 128 wide, 4 deep", "vit_mini_patch4_28",
     dict(_VIT, embed_dim=128, depth=4, num_heads=4, conv_stem=(32, 64)), 2, "fp32"),
    ("vit_mini_convstem_28 (fmnist_vit_long)", "vit_mini_convstem_28", {}, 1, "fp32"),
    ("resnet18_28", "resnet18_28", {}, 1, "fp32"),
    ("vt_resnet18_28", "vt_resnet18_28", {}, 1, "fp32"),
]
QUICK = [("vit_test", "vit_test", {}, 1, "fp32"), ("vit_test", "vit_test", {}, 2, "fp32"),
         ("vit_test", "vit_test", {}, 1, "bf16")]


def _steps(model, opt, x, y, precision: str, steps: int) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    t = time.perf_counter()
    for _ in range(steps):
        with ctx:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return len(x) * steps / (time.perf_counter() - t)


def measure(configs, img_size: int, batch: int, rounds: int, steps: int) -> list[dict]:
    """Median training images/s of each configuration over ``rounds`` interleaved rounds (after a warm-up)."""
    from vitkit.registry import create_model

    x, y = torch.randn(batch, 1, img_size, img_size), torch.randint(0, 10, (batch,))
    built = []
    for label, name, ov, threads, precision in configs:
        model = create_model(name, **ov, img_size=img_size, in_chans=1, num_classes=10).train()
        built.append((label, name, threads, precision, model, torch.optim.AdamW(model.parameters(), lr=1e-4), []))
    for r in range(rounds + 1):
        for _, _, threads, precision, model, opt, speeds in built:
            torch.set_num_threads(threads)
            speed = _steps(model, opt, x, y, precision, steps)
            if r:
                speeds.append(speed)
    return [{"config": label, "model": name, "threads": th, "precision": pr, "img_per_s": statistics.median(sp),
             "rounds": sp} for label, name, th, pr, _, _, sp in built]


def main(argv=None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "benchmarks/results")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    configs, size, rounds, steps = (QUICK, 16, 1, 1) if args.quick else (CONFIGS, 28, args.rounds, 3)
    with common.LoadMonitor(every=2.0) as load:
        rows = measure(configs, size, 16 if args.quick else args.batch, rounds, steps)
    table = common.md_table(["configuration", "threads", "precision", "train img/s (median)"],
                            [[r["config"], r["threads"], r["precision"], f"{r['img_per_s']:.0f}"] for r in rows])
    notes = f"Batch {16 if args.quick else args.batch}, {size} px, load average during the measurement {load.mean:.1f}."
    common.write_results(Path(args.out), "throughput", "Training throughput (interleaved)", table,
                         {"rows": rows, "load_mean": load.mean}, notes=notes)
    return rows


if __name__ == "__main__":
    main()
