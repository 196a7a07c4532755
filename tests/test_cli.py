"""The ``vitkit`` dispatcher and the ``models`` command."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vitkit.cli import main


def test_models_lists_and_filters(capsys):
    assert main(["models", "vit_test*"]) == 0
    out = capsys.readouterr().out
    assert "vit_test " in out and "vit_test_avg" in out and "deit" not in out


def test_models_with_no_match_exits_nonzero(capsys):
    assert main(["models", "nothing_like_this"]) == 1


@pytest.mark.parametrize("argv, needle", [
    (["export", "no_such_model", "--format", "onnx"], "unknown model"),
    (["export", "vit_test", "--format", "tflite"], "format"),
    (["flops", "vit_tset"], "did you mean vit_test"),
    (["train", "--model", "vit_test", "--set", "optim.lrr=1"], "unknown config field"),
    (["eval", "/no/such/run"], "/no/such/run"),
    (["explain", "vit_test", "/no/such/image.png"], "image.png"),
    (["bench", "vit_tset"], "unknown model"),
])
def test_user_errors_are_one_line_without_traceback(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "vitkit.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert needle in proc.stderr


def test_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "vitkit.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("train", "eval", "predict", "models", "flops", "explain", "export", "bench"):
        assert name in proc.stdout
