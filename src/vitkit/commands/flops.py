"""``vitkit flops MODEL --img-size N``: parameters and FLOPs, whole model and neck / VT part."""
from __future__ import annotations

from vitkit.commands.options import add_set_argument, model_sets

HELP = "count parameters and FLOPs (and MACs) of a model, whole and its neck / VT part"


def add_arguments(p) -> None:
    p.add_argument("model", help="registered model name (see `vitkit models`) or a save_pretrained / run dir")
    p.add_argument("--img-size", type=int, default=None, help="square input size in pixels (default: the model's)")
    p.add_argument("--part", default="auto",
                   help="submodule to measure separately (default: neck, vt or trunk.layer4; 'none' to skip)")
    add_set_argument(p, "model.vt.token_channels=1024 model.backbone.depth=50 (model. is optional)")


def run(args) -> int:
    from vitkit.tools.flops import format_report, measure

    part = None if args.part.lower() == "none" else args.part
    print(format_report(measure(args.model, args.img_size, part, model_sets(args))))
    return 0
