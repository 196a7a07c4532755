"""Transfer at small scale: pre-train a small ViT on Fashion-MNIST classes 0-4, then fine-tune it on
few labelled images of classes 5-9, and of the 8x8 digits upsampled to 35 px with 3 channels (E_pos
resampled 4x4 -> 5x5, the first convolution adapted from 1 to 3 channels). Each target task is also
trained from scratch with the same budget (optimizer steps, batch, schedule). Methods:

    scratch / full       random init, every parameter trained
    scratch / linear     random init, head alone (random features)
    pretrained / linear  linear probe: the pre-trained backbone frozen (eval mode), head trained
    pretrained / full    full fine-tune with layer-wise lr decay

Everything runs in this process (one model at a time, ``--threads`` torch threads). The pre-training
is done once (seed 0); the seeds vary the labelled subset, the head's init and the batch order.
"""
from __future__ import annotations

import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, command_line, machine  # noqa: E402
from vitkit import create_model  # noqa: E402
from vitkit.data.digits import load_digits_tensors  # noqa: E402
from vitkit.data.fashion_mnist import load_split  # noqa: E402
from vitkit.engine.finetune import set_trainable  # noqa: E402
from vitkit.engine.optim import build_optimizer, warmup_cosine  # noqa: E402
from vitkit.engine.run_config import OptimConfig  # noqa: E402
from vitkit.models.adapt import adapt_weights  # noqa: E402

ARCH = dict(img_size=28, in_chans=1, patch_size=7, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
            class_token=False, global_pool="avg")
SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
DIGITS_SIZE = 35  # 8x8 digits upsampled: a 5x5 grid of 7x7 patches (pre-trained on 4x4)
METHODS = (("scratch", "full"), ("scratch", "linear"), ("pretrained", "linear"), ("pretrained", "full"))


def load_adapted(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Pre-trained backbone weights into ``model`` (other classes, channels, image size); one report line."""
    state, report = adapt_weights(model, state)
    model.load_state_dict(state)
    return report.line("pre-training")


def fmnist_task(data_dir, classes, split):
    """Images of ``classes`` as floats in [-1, 1] (N, 1, 28, 28), labels renumbered 0..len-1."""
    x, y = load_split(data_dir, split)
    keep = torch.isin(y, torch.tensor(classes))
    remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    remap[list(classes)] = torch.arange(len(classes))
    labels = remap[y[keep]]
    return x[keep].float() / 127.5 - 1.0, labels


def digits_task(seed: int, test_per_class: int):
    """Digits at DIGITS_SIZE px, 3 equal channels in [-1, 1]; a seeded per-class test split."""
    x, y = load_digits_tensors()
    x = F.interpolate(x, size=DIGITS_SIZE, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1) * 2 - 1
    g = torch.Generator().manual_seed(1000 + seed)
    test = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)]
                      [:test_per_class] for c in range(10)])
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test] = False
    return (x[mask], y[mask]), (x[test], y[test])


def few_shot(x, y, per_class: int, seed: int):
    """``per_class`` images of each class, drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    idx = [torch.nonzero(y == c).flatten() for c in range(int(y.max()) + 1)]
    idx = torch.cat([i[torch.randperm(len(i), generator=g)[:per_class]] for i in idx])
    return x[idx], y[idx]


def train(model, x, y, steps: int, batch: int, optim_cfg, seed: int, head_only: bool) -> None:
    """AdamW with warm-up + cosine over ``steps``; a head-only run keeps the frozen backbone in eval mode."""
    set_trainable(model, head_only)
    opt = build_optimizer(model, optim_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps // 10, steps, 0.01))
    g = torch.Generator().manual_seed(seed)
    model.train(not head_only)
    model.head.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(x), generator=g)])
        take, order = order[:batch], order[batch:]
        loss = F.cross_entropy(model(x[take]), y[take])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    set_trainable(model, False)


@torch.no_grad()
def accuracy(model, x, y, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def pretrain(args, x, y) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch7_28", **ARCH, num_classes=len(SOURCE))
    train(model, x, y, args.pretrain_steps, args.pretrain_batch, OptimConfig(lr=2e-3, weight_decay=0.05), 0, False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_one(args, task, source_state, init: str, mode: str, per_class: int, seed: int) -> float:
    (xtr, ytr), (xte, yte), img_size, in_chans = task
    torch.manual_seed(seed)
    model = create_model("vit_tiny_patch7_28", **dict(ARCH, img_size=img_size, in_chans=in_chans),
                         num_classes=int(ytr.max()) + 1)
    if init == "pretrained":
        line = load_adapted(model, source_state)
        if args.verbose:
            print(line, flush=True)
    x, y = few_shot(xtr, ytr, per_class, seed)
    lr = args.lr_linear if mode == "linear" else args.lr
    decay = args.layer_decay if (init, mode) == ("pretrained", "full") else None
    train(model, x, y, args.steps, args.batch, OptimConfig(lr=lr, weight_decay=0.05, layer_decay=decay), seed,
          head_only=mode == "linear")
    return accuracy(model, xte, yte)


def tasks(args, seed: int):
    """(name, per-class counts, data) of each target task."""
    fm_train, fm_test = fmnist_task(args.data_dir, TARGET, "train"), fmnist_task(args.data_dir, TARGET, "test")
    fm_test = (fm_test[0][:args.test_limit], fm_test[1][:args.test_limit])
    yield "Fashion-MNIST 5-9 (28 px, 1 ch)", args.shots, (fm_train, fm_test, 28, 1)
    yield f"digits ({DIGITS_SIZE} px, 3 ch)", args.digit_shots, (*digits_task(seed, args.digits_test), DIGITS_SIZE, 3)


def summarise(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def write(args, rows: list[dict], pre_acc: float, seconds: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({(r["task"], r["per_class"]) for r in rows}, key=lambda k: (k[0][0] != "F", k[1]))
    head = "| task | labelled / class | " + " | ".join(f"{i} / {m}" for i, m in METHODS) + " |"
    lines = [head, "|" + "---|" * (2 + len(METHODS))]
    for task, n in keys:
        cells = [summarise([r["acc"] for r in rows if (r["task"], r["per_class"], r["init"], r["mode"]) ==
                            (task, n, i, m)]) for i, m in METHODS]
        lines.append(f"| {task} | {n} | " + " | ".join(cells) + " |")
    text = "\n".join([
        f"Test accuracy (%), mean ± std over {args.seeds} seeds; {args.steps} steps of batch {args.batch} per run.",
        "", *lines, "",
        f"Pre-training: {args.pretrain_steps} steps of batch {args.pretrain_batch} on Fashion-MNIST classes 0-4 "
        f"(test accuracy on those classes {100 * pre_acc:.1f}%).",
        f"Command: `{command_line()}`", f"Date: {_dt.date.today().isoformat()}", f"Machine: {machine()}",
        f"Wall time: {seconds / 60:.1f} min", ""])
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps({"rows": rows, "pretrain_acc": pre_acc, "seconds": seconds,
                                                   "args": {k: v for k, v in vars(args).items()}}, indent=1))
    print(text)


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], "benchmarks/results/transfer")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--pretrain-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per fine-tune / scratch run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-linear", type=float, default=1e-2)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--shots", type=int, nargs="+", default=[10, 50, 250])
    p.add_argument("--digit-shots", type=int, nargs="+", default=[10, 50])
    p.add_argument("--test-limit", type=int, default=1000, help="Fashion-MNIST test images of classes 5-9 used")
    p.add_argument("--digits-test", type=int, default=50, help="held-out digits per class")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.steps, args.batch, args.shots, args.digit_shots = 5, 3, 8, [10], [10]
        args.test_limit, args.digits_test, args.seeds = 50, 5, max(1, min(args.seeds, 2))
    args.seeds = max(args.seeds, 1)
    torch.set_num_threads(args.threads or 1)
    t0 = time.perf_counter()
    src_train, src_test = fmnist_task(args.data_dir, SOURCE, "train"), fmnist_task(args.data_dir, SOURCE, "test")
    source_state = pretrain(args, *src_train)
    probe = create_model("vit_tiny_patch7_28", **ARCH, num_classes=len(SOURCE))
    probe.load_state_dict(source_state)
    pre_acc = accuracy(probe, src_test[0][:args.test_limit], src_test[1][:args.test_limit])
    print(f"pre-trained in {time.perf_counter() - t0:.0f}s: {100 * pre_acc:.1f}% on classes 0-4", flush=True)
    rows = []
    for seed in range(args.seeds):
        for name, shots, task in tasks(args, seed):
            for n in shots:
                for init, mode in METHODS:
                    acc = run_one(args, task, source_state, init, mode, n, seed)
                    rows.append(dict(task=name, per_class=n, init=init, mode=mode, seed=seed, acc=acc))
                    print(f"seed {seed} {name} n={n} {init}/{mode}: {100 * acc:.1f}%", flush=True)
    write(args, rows, pre_acc, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
