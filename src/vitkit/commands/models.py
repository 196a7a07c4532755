"""``vitkit models [PATTERN]``: list registered models with their size."""
from __future__ import annotations

HELP = "list registered models (glob pattern, e.g. 'vit_*'), with parameter counts"


def add_arguments(p) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    p.add_argument("--tag", default=None, help="only models with this tag (vit, vt, resnet, seg, small, test)")
    p.add_argument("--params", action="store_true", help="build each model to count its parameters (slower)")


def run(args) -> int:
    from vitkit.registry import get_entry, list_models

    names = list_models(args.pattern, tag=args.tag)
    if not names:
        print(f"no model matches '{args.pattern}'")
        return 1
    width = max(len(n) for n in names)
    for name in names:
        entry = get_entry(name)
        cfg = entry.config
        h, w = cfg.img_size
        size = str(h) if h == w else f"{h}x{w}"
        line = f"{name:<{width}}  {entry.cls.__name__:<20} img {size:<4} in_chans {cfg.in_chans}"
        if args.params:
            n = sum(p.numel() for p in entry.build().parameters())
            line += f"  {n / 1e6:8.2f}M params"
        print(f"{line}  [{', '.join(entry.tags)}]")
    return 0
