"""``vitkit export MODEL_OR_RUN --format onnx|torch-export|pretrained``: export and verify against PyTorch."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument, device_of, model_sets

HELP = ("export to ONNX (dynamic batch, checked with onnxruntime) or torch.export (.pt2); "
        "a run's checkpoint (sharded too) to a save_pretrained dir")


def add_arguments(p) -> None:
    p.add_argument("model", help="registered model name, save_pretrained dir or `vitkit train` run dir")
    p.add_argument("--format", default="onnx",
                   help="onnx (default), torch-export, or pretrained: a run dir's checkpoint (FSDP-sharded or "
                        "not) as a plain save_pretrained dir, in one process")
    p.add_argument("--out", default=None, help="output file (default: <model name>.onnx / .pt2)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version, 17..25 (default: 18)")
    p.add_argument("--img-size", type=int, default=None, help="export for this image size (default: the model's)")
    p.add_argument("--images", nargs="+", default=None,
                   help="image files to check the export on (default: random batches of 1 and 3)")
    add_set_argument(p, "model.img_size=32 (model. is optional)")
    add_device_option(p)


def _inputs(args, model, pre):
    if not args.images:
        return None
    import torch

    from vitkit.data import load_image

    x = torch.stack([load_image(p, pre) for p in args.images])  # (B, C, H, W)
    x3 = x.repeat(3, 1, 1, 1)[:3]  # at least batch 1 and batch 3
    return {1: x[:1], 3: x3, **({len(x): x} if len(x) > 3 else {})}


def _export_checkpoint(args) -> int:
    from pathlib import Path

    from vitkit.engine.checkpoint import export_pretrained

    out = args.out or f"{Path(str(args.model).rstrip('/')).name}_pretrained"
    print(f"wrote {export_pretrained(args.model, out)} (save_pretrained dir: the checkpoint's weights)")
    return 0


def run(args) -> int:
    from pathlib import Path

    from vitkit.errors import VitkitError
    from vitkit.registry import create_model
    from vitkit.tools.export import FORMATS, SUFFIX, check_opset, export_model

    if args.format == "pretrained":
        return _export_checkpoint(args)
    if args.format not in FORMATS:
        raise VitkitError(f"unknown export format '{args.format}'; choose one of {', '.join(FORMATS)}, pretrained")
    if args.format == "onnx":
        check_opset(args.opset)  # before any work
    overrides = {**model_sets(args), **({"img_size": args.img_size} if args.img_size else {})}
    model = create_model(args.model, **overrides).eval().to(device_of(args))
    pre = model.preprocess
    out = args.out or f"{Path(str(args.model).rstrip('/')).name}{SUFFIX[args.format]}"
    res = export_model(model, out, args.format, args.opset, pre.img_size, _inputs(args, model, pre))
    detail = f"opset {res.opset}, " if res.opset else ""
    print(f"wrote {res.path} ({args.format}, {detail}dynamic batch axis, input (B, {pre.in_chans}, "
          f"{pre.img_size[0]}, {pre.img_size[1]}))")
    for b, diff in res.max_abs_diff.items():
        print(f"batch {b}: max |exported - pytorch| = {diff:.3e}")
    return 0
