"""Per-item transform cost: ``python -m vitkit.data.bench [--items N] [--threads T]``.

Builds each data set/augmentation pair and times ``dataset[i]`` (transform included) in one
process, the way a DataLoader worker runs it. Prints microseconds per item.
"""
from __future__ import annotations

import argparse
import time

import torch

from vitkit.data import DataConfig, build_data

CASES = (
    ("fashion-mnist", dict(augment="none")),
    ("fashion-mnist", dict(augment="basic")),
    ("fashion-mnist", dict(augment="basic", img_size=32)),
    ("fashion-mnist", dict(augment="randaugment")),
    ("digits", dict(augment="basic")),
    ("seg-canvas", dict(augment="basic", canvas_train_size=2000)),
)


def time_items(dataset, n: int) -> float:
    """Median over 3 runs of the mean seconds per ``dataset[i]`` over ``n`` items."""
    n = min(n, len(dataset))
    for i in range(min(100, n)):  # warm-up
        dataset[i]
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(n):
            dataset[i]
        runs.append((time.perf_counter() - start) / n)
    return sorted(runs)[1]


def v2_baseline(bundle) -> torch.utils.data.Dataset:
    """The same basic augmentation as a torchvision.transforms.v2.Compose, for comparison."""
    from torchvision.transforms import v2

    from vitkit.data.datasets import ArrayDataset

    ops = v2.Compose([
        v2.RandomCrop(bundle.img_size, padding=2), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(bundle.mean), list(bundle.std)),
    ])
    base = bundle.train.dataset if isinstance(bundle.train, torch.utils.data.Subset) else bundle.train
    return ArrayDataset(base.images, base.labels, ops)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'data set':15s} {'options':45s} {'us/item':>8s}")
    for name, opts in CASES:
        bundle = build_data(DataConfig(name=name, **opts))
        print(f"{name:15s} {str(opts):45s} {time_items(bundle.train, args.items) * 1e6:8.1f}")
        if name == "fashion-mnist" and opts == {"augment": "basic"}:
            print(f"{name:15s} {'(v2.Compose crop+flip+normalise, reference)':45s} {time_items(v2_baseline(bundle), args.items) * 1e6:8.1f}")


if __name__ == "__main__":
    main()
