"""``vitkit push RUN ORG/REPO [--private]``: publish a run's model on the Hugging Face Hub."""
from __future__ import annotations

HELP = "upload a run's model (or a save_pretrained dir) to the Hugging Face Hub, with its model card"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="a `vitkit train` run dir or a save_pretrained dir")
    p.add_argument("repo", metavar="ORG/REPO", help="the model repo to create (if needed) and upload to")
    p.add_argument("--private", action="store_true", help="create the repo private")


def run(args) -> int:
    from vitkit.tools.push import push

    url = push(args.run, args.repo, private=args.private)
    print(f"pushed {args.run} to {url}; load it with vitkit.create_model(\"hf:{args.repo}\")")
    return 0
