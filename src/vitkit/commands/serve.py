"""``vitkit serve MODEL_OR_RUN [--host 127.0.0.1] [--port 7860]``: a web page for a model."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument, device_of, model_sets

HELP = "a web page (Gradio) and JSON API for a model: top-k bars, rollout, VT token maps, masks"


def add_arguments(p) -> None:
    p.add_argument("model", help="registered model name, save_pretrained dir or `vitkit train` run dir")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes the bars show (default 5)")
    p.add_argument("--examples", nargs="*", default=None, metavar="IMAGE",
                   help="example images offered on the page (default: the bundled digits and Fashion-MNIST items)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_set_argument(p, "model.img_size=32 (model. is optional)")
    add_device_option(p)


def _examples(specs):
    from vitkit.data import list_image_files
    from vitkit.tools.serve import bundled_examples

    if specs is None:
        return bundled_examples()
    return [path for spec in specs for path in list_image_files(spec)]


def run(args) -> int:
    import logging

    import torch

    from vitkit.errors import VitkitError

    if args.top_k < 1:
        raise VitkitError(f"--top-k must be >= 1, got {args.top_k}")
    if not 0 <= args.port <= 65535:
        raise VitkitError(f"--port must be 0..65535, got {args.port}")
    if args.threads is not None:
        if args.threads < 1:
            raise VitkitError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="vitkit serve: %(message)s")
    try:
        import uvicorn

        from vitkit.tools.demo import build_app
    except ModuleNotFoundError as exc:
        raise VitkitError(f"vitkit serve needs {exc.name}: pip install 'vitkit[serve]'") from None
    from vitkit.tools.serve import Predictor

    predictor = Predictor.load(args.model, args.top_k, device_of(args), model_sets(args))
    app = build_app(predictor, _examples(args.examples))
    print(f"vitkit serve: {args.model} ({predictor.task}) on http://{args.host}:{args.port}  (Ctrl-C stops it)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
