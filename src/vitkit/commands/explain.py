"""``vitkit explain MODEL_OR_RUN [IMAGES...] [--figure NAME ...]``: attention maps and the ViT
paper's Fig. 7 panels as PNGs."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument, device_of, model_sets

HELP = ("explain a model: attention rollout, per-head maps, VT token maps, and the ViT paper's "
        "figures (patch-embedding filters, position-embedding similarity, attention distance)")


def add_arguments(p) -> None:
    p.add_argument("model", help="registered model name, save_pretrained dir or `vitkit train` run dir")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders or globs (preprocessed as in training when the run saved it); "
                        "rollout and tokens explain the first, attention-distance averages over all")
    p.add_argument("--figure", nargs="+", default=None, metavar="NAME",
                   help="figures to draw: filters, pos-embed, attention-distance (ViT paper Fig. 7), rollout (ViT), "
                        "tokens (VT token maps); default: rollout for a ViT, tokens for a VT")
    p.add_argument("--out", default="explain_out", help="output directory for the PNGs (default: explain_out)")
    p.add_argument("--layer", type=int, nargs="+", default=None,
                   help="layers to draw per-head maps for (default: all; negatives count from the end)")
    p.add_argument("--fusion", choices=("mean", "max", "min"), default="mean",
                   help="how rollout fuses the heads of a layer (default: mean)")
    add_set_argument(p, "model.img_size=32 (model. is optional)")
    add_device_option(p)


def _images(specs) -> list:
    from vitkit.data import list_image_files

    return [path for spec in specs for path in list_image_files(spec)]


def run(args) -> int:
    from vitkit.errors import VitkitError
    from vitkit.registry import create_model
    from vitkit.tools.explain import explain_loaded
    from vitkit.tools.figures import write_figures

    device = device_of(args)
    model = create_model(args.model, **model_sets(args)).eval()
    images = _images(args.images)
    if args.figure is None:
        if not images:
            raise VitkitError("pass an image to explain, or choose --figure filters / pos-embed (no image needed)")
        exp, paths = explain_loaded(model, images[0], args.out, args.layer, args.fusion, device)
        if exp.logits.ndim == 2:
            probs = exp.logits.float().softmax(-1)[0]
            k, names = int(probs.argmax()), getattr(model, "class_names", None)
            name = f"{names[k]} (class {k})" if names and k < len(names) else f"class {k}"
            print(f"predicted {name} (p={float(probs.max()):.3f})")
    else:
        paths = write_figures(model, args.figure, images, args.out, args.layer, args.fusion, device)
    for path in paths:
        print(f"wrote {path}")
    return 0
