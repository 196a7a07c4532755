"""docs/finetune.md end to end at tiny scale: its folder script, the finetune_folder recipe
(train, linear probe), eval and predict, in-process through the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

from vitkit.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"
TINY = ["--model", "vit_test", "--set", "data.img_size=16", "batch_size=32", "tensorboard=false",
        "progress=false", "threads=1"]


def test_finetune_doc_steps(tmp_path, monkeypatch, capsys):
    text = DOC.read_text()
    script = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "--recipe finetune_folder --data-dir digits_png" in text
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "make_digits_folder.py", "exec"), {"__name__": "__main__"})
    folders = sorted(p.name for p in (tmp_path / "digits_png").iterdir())
    assert folders == [str(i) for i in range(10)]
    assert len(list((tmp_path / "digits_png").rglob("*.png"))) == 1797
    for folder in (tmp_path / "digits_png").iterdir():  # a tiny scale: 8 images per class
        for extra in sorted(folder.iterdir())[8:]:
            extra.unlink()

    assert main(["train", "--recipe", "finetune_folder", "--data-dir", "digits_png", "--out", "runs/digits_ft",
                 "--epochs", "2", *TINY]) == 0
    config = json.loads((tmp_path / "runs/digits_ft/config.json").read_text())
    assert config["finetune"]["mode"] == "head-warmup" and config["optim"]["layer_decay"] == 0.75
    assert main(["train", "--recipe", "finetune_folder", "--data-dir", "digits_png", "--out", "runs/digits_probe",
                 "--epochs", "1", *TINY, "finetune.mode=linear", "optim.lr=1e-2"]) == 0
    capsys.readouterr()
    assert main(["eval", "runs/digits_ft", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["top1"] <= 1.0
    assert main(["predict", "runs/digits_ft", "digits_png/3/0003.png", "digits_png/7", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("path") and any("0003.png" in r for r in rows[1:])
