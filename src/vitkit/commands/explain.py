"""``vitkit explain MODEL_OR_RUN IMAGE``: attention maps and rollout as PNG overlays."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument, device_of, model_sets

HELP = "explain a prediction: per-layer/per-head attention, CLS maps and attention rollout as PNGs"


def add_arguments(p) -> None:
    p.add_argument("model", help="registered model name, save_pretrained dir or `vitkit train` run dir")
    p.add_argument("image", help="image file (preprocessed as in training when the run saved it)")
    p.add_argument("--out", default="explain_out", help="output directory for the PNGs (default: explain_out)")
    p.add_argument("--layer", type=int, nargs="+", default=None,
                   help="layers to draw per-head maps for (default: all; negatives count from the end)")
    p.add_argument("--fusion", choices=("mean", "max", "min"), default="mean",
                   help="how rollout fuses the heads of a layer (default: mean)")
    add_set_argument(p, "model.img_size=32 (model. is optional)")
    add_device_option(p)


def run(args) -> int:
    from vitkit.tools.explain import explain_image

    exp, paths = explain_image(args.model, args.image, args.out, args.layer, args.fusion, device_of(args),
                               model_sets(args))
    logits = exp.logits
    if logits.ndim == 2:
        probs = logits.float().softmax(-1)[0]
        print(f"predicted class {int(probs.argmax())} (p={float(probs.max()):.3f})")
    for path in paths:
        print(f"wrote {path}")
    return 0
