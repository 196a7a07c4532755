"""Attention on the CPU: torch's fused kernel against the explicit attention matrix, per dtype and shape.

    python benchmarks/attention_kernels.py            # ViT shapes, fp32 and bf16, forward and forward + backward
    python benchmarks/attention_kernels.py --quick    # one small shape, a few repeats (smoke test)

For each shape (batch, heads, tokens, head dim), dtype and step (``infer``: forward under inference mode;
``train``: forward and backward), ``F.scaled_dot_product_attention`` and
``vitkit.layers.attention.explicit_attention`` (q k^T, softmax, times v as two batched matmuls) run in turn,
``--repeats`` times each after two untimed runs; the table gives the median milliseconds and the
fused / explicit ratio (above 1: the explicit matrix is faster). ``vitkit.layers.attention.explicit_is_faster``
picks the kernel from these figures.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {  # name: (batch, heads, tokens, head dim)
    "ViT-S/16 at 224 px, batch 32": (32, 6, 197, 64),
    "ViT-S/16 at 384 px, batch 8": (8, 6, 577, 64),
    "ViT-S/16 at 176 px, batch 32": (32, 6, 122, 64),
    "vit_mini_patch4_32, batch 64": (64, 3, 65, 64),
    "vit_tiny_convstem7_28, batch 128": (128, 4, 16, 32),
}
QUICK = {"tiny": (2, 2, 9, 8)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _timed(fn, q, k, v, grad, train: bool) -> float:
    q, k, v = (t.detach().requires_grad_(train) for t in (q, k, v))
    t0 = time.perf_counter()
    if train:
        fn(q, k, v).backward(grad)
    else:
        with torch.inference_mode():
            fn(q, k, v)
    return time.perf_counter() - t0


def measure(shape: tuple[int, int, int, int], dtype: torch.dtype, train: bool, repeats: int) -> dict:
    from vitkit.layers.attention import explicit_attention

    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(shape, generator=g).to(dtype) for _ in range(4))
    kernels = {"fused": F.scaled_dot_product_attention, "explicit": lambda *a: explicit_attention(*a)[0]}
    times = {name: [] for name in kernels}
    for i in range(repeats + 2):
        for name, fn in kernels.items():
            t = _timed(fn, q, k, v, grad, train)
            if i >= 2:
                times[name].append(t)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv=None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "benchmarks/results")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    from vitkit.engine.device import keep_host_memory

    keep_host_memory()
    shapes, repeats = (QUICK, 2) if args.quick else (SHAPES, args.repeats)
    rows = []
    with common.LoadMonitor(every=2.0) as load:
        for label, shape in shapes.items():
            for dname, dtype in DTYPES.items():
                for step in ("infer", "train"):
                    ms = measure(shape, dtype, step == "train", repeats)
                    rows.append({"shape": label, "dims": shape, "dtype": dname, "step": step, **ms,
                                 "fused_over_explicit": ms["fused"] / ms["explicit"]})
    table = common.md_table(
        ["shape (B, heads, N, d)", "dtype", "step", "fused ms", "explicit ms", "fused / explicit"],
        [[f"{r['shape']} {r['dims']}", r["dtype"], r["step"], f"{r['fused']:.2f}", f"{r['explicit']:.2f}",
          f"{r['fused_over_explicit']:.2f}x"] for r in rows])
    notes = (f"Median of {repeats} runs per kernel, in turn, {torch.get_num_threads()} threads; "
             f"load average {load.mean:.1f}.")
    common.write_results(Path(args.out), "attention_kernels", "Attention kernels on the CPU", table,
                         {"rows": rows, "load_mean": load.mean}, notes=notes)
    return rows


if __name__ == "__main__":
    main()
