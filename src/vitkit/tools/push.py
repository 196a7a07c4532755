"""Publish a model on the Hugging Face Hub: ``vitkit push RUN ORG/REPO [--private]``.

The folder uploaded is ``RUN/model`` of a ``vitkit train`` run (its card then carries the data
set, the metrics and the command) or a ``save_pretrained`` dir. Its model card is rewritten
with the repo id first, unless the README.md lacks vitkit's marker line (your own edits).
``huggingface_hub`` does the work: ``HfApi.create_repo`` (``exist_ok``) + ``upload_folder``.
Anyone then loads it with ``vitkit.create_model("hf:ORG/REPO")``.
"""
from __future__ import annotations

import re
from pathlib import Path

from vitkit.convert.checkpoint import read_folder
from vitkit.engine.report import write_run_card
from vitkit.errors import VitkitError
from vitkit.io import atomic_write_text
from vitkit.models.card import CARD_NAME, MARKER, model_card
from vitkit.models.hub import CONFIG_NAME, is_pretrained_dir

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def model_folder(path) -> tuple[Path, bool]:
    """(the folder to upload, whether it is a run's model) for a run dir or a save_pretrained dir."""
    path = Path(path)
    if is_pretrained_dir(path / "model"):
        return path / "model", True
    if is_pretrained_dir(path):
        return path, False
    raise VitkitError(f"{path} is not a run dir or a save_pretrained dir (no config.json in it or in model/); "
                      "pass the --out of `vitkit train`")


def _refresh_card(folder: Path, is_run: bool, repo_id: str) -> None:
    card = folder / CARD_NAME
    if card.is_file() and MARKER not in card.read_text(errors="replace"):
        return  # the owner's own card
    if is_run:
        write_run_card(folder.parent, repo_id)
    else:
        atomic_write_text(card, model_card(read_folder(folder).meta, repo_id, repo_id))


def push(path, repo_id: str, private: bool = False) -> str:
    """Upload the model of run / save dir ``path`` to the model repo ``repo_id``; its URL."""
    if not REPO_ID.match(repo_id):
        raise VitkitError(f"bad repo id '{repo_id}'; write ORG/REPO (your user or organisation, a slash, a name)")
    folder, is_run = model_folder(path)
    if read_folder(folder).format != "vitkit":
        raise VitkitError(f"{folder / CONFIG_NAME} is not a vitkit model; push models saved by vitkit")
    _refresh_card(folder, is_run, repo_id)
    from huggingface_hub import HfApi  # imported on use: it adds ~0.5 s to every start
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"vitkit push {Path(path).name}")
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = "log in with `hf auth login` or set HF_TOKEN" if status in (401, 403) else "check the repo id"
        raise VitkitError(f"the Hub refused the upload to {repo_id} ({str(exc).splitlines()[0]}); {hint}") from None
    except (OSError, ConnectionError) as exc:
        raise VitkitError(f"cannot reach the Hugging Face Hub to push {repo_id} ({str(exc).splitlines()[0]}); "
                          "check the network (HF_HUB_OFFLINE must be unset)") from None
    return str(url)
