"""The Hub round trip: model cards, ``vitkit push`` (up to the network call) and loading the pushed
folder back with ``create_model("hf:ORG/REPO")`` from the local cache, offline."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

import vitkit
from hub_cache import cache_repo
from vitkit.cli import main as cli_main
from vitkit.engine.report import write_run_card
from vitkit.errors import VitkitError
from vitkit.models.card import MARKER
from vitkit.preprocess import Preprocess
from vitkit.tools.push import push

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("VITKIT_UPDATE_SNAPSHOTS") == "1"  # regenerate the expected cards


def _model():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_test").eval()
    model.preprocess = Preprocess(16, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", 0.875)
    model.class_names = ["ant", "bee", "cat", "dog", "eel"]
    return model


def _run_dir(tmp_path) -> Path:
    """A finished run as `vitkit train` leaves it: run config, metrics (with the command), model/."""
    run = tmp_path / "digits_run"
    _model().save_pretrained(run / "model")
    (run / "config.json").write_text(json.dumps({"model": "vit_test", "epochs": 3,
                                                 "data": {"name": "digits", "data_dir": None}}))
    (run / "metrics.json").write_text(json.dumps({"top1": 0.93125, "top5": 0.99, "loss": 0.2, "epochs": 3,
                                                  "command": "vitkit train --model vit_test --epochs 3"}))
    return run


def _snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with VITKIT_UPDATE_SNAPSHOTS=1 if that is intended"


def test_model_card_snapshot_and_hub_metadata(tmp_path):
    _model().save_pretrained(tmp_path / "vit_test_card")
    text = (tmp_path / "vit_test_card" / "README.md").read_text()
    _snapshot("model_card.md", text)
    data = ModelCard(text).data.to_dict()  # what the Hub reads from the card
    assert (data["library_name"], data["license"], data["pipeline_tag"]) == ("vitkit", "apache-2.0",
                                                                             "image-classification")
    saved = json.loads((tmp_path / "vit_test_card" / "config.json").read_text())
    assert data["vitkit"] == {"family": "vit", "config": saved["config"], "preprocess": saved["preprocess"]}


def test_run_card_snapshot_has_data_metrics_and_command(tmp_path):
    run = _run_dir(tmp_path)
    text = write_run_card(run, "org/digits-vit").read_text()
    _snapshot("run_card.md", text)
    card = ModelCard(text)
    assert card.data.datasets == ["digits"]
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("digits", "accuracy", 0.9313)
    assert "vitkit train --model vit_test --epochs 3" in text and 'create_model("hf:org/digits-vit")' in text


@pytest.fixture
def fake_hub(hub_cache, monkeypatch):
    """HfApi.create_repo / upload_folder replaced: the upload lands in the local hub cache, as a
    later download would put it there."""
    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kw):
        calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        cache_repo(hub_cache, repo_id, Path(folder_path))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_save_push_pull_gives_the_same_logits(tmp_path, fake_hub, capsys):
    run = _run_dir(tmp_path)
    assert cli_main(["push", str(run), "org/digits-vit", "--private"]) == 0
    assert "hf:org/digits-vit" in capsys.readouterr().out
    assert fake_hub == [("create_repo", "org/digits-vit", True, True),
                        ("upload_folder", "org/digits-vit", ["README.md", "config.json", "model.safetensors"])]
    pulled = vitkit.create_model("hf:org/digits-vit").eval()
    original = _model()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pulled(x), original(x), rtol=0, atol=0)
    assert pulled.preprocess == original.preprocess and pulled.class_names == original.class_names


def test_push_keeps_a_card_without_the_marker(tmp_path, fake_hub):
    _model().save_pretrained(tmp_path / "saved")
    card = tmp_path / "saved" / "README.md"
    assert MARKER in card.read_text()
    push(tmp_path / "saved", "org/saved")
    assert 'create_model("hf:org/saved")' in card.read_text()  # vitkit's card: rewritten with the repo id
    card.write_text("# my own card\n")
    push(tmp_path / "saved", "org/saved")
    assert card.read_text() == "# my own card\n"


@pytest.mark.parametrize("args, match", [
    (["RUN", "not-a-repo-id"], "bad repo id 'not-a-repo-id'; write ORG/REPO"),
    (["EMPTY", "org/repo"], "is not a run dir or a save_pretrained dir"),
    (["RUN", "org/repo"], "cannot reach the Hugging Face Hub to push org/repo"),  # offline: the real HfApi
])
def test_push_errors_are_one_line_exit_2(tmp_path, hub_cache, capsys, args, match):
    paths = {"RUN": str(_run_dir(tmp_path)), "EMPTY": str(tmp_path)}
    assert cli_main(["push", *(paths.get(a, a) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    with pytest.raises(VitkitError, match=match):
        push(*(paths.get(a, a) for a in args))
