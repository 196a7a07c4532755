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
def test_user_errors_are_one_line_without_traceback(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    assert needle in err


def test_a_real_process_exits_2_with_one_stderr_line():
    """The ``python -m vitkit.cli`` entry point: exit status 2 and nothing on stderr but the one line
    (no traceback, no import-time warnings); the in-process test above covers every command."""
    argv = ["explain", "vit_test", "/no/such/image.png"]
    proc = subprocess.run([sys.executable, "-m", "vitkit.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "image.png" in proc.stderr


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "predict", "models", "flops", "explain", "export", "bench"):
        assert name in out
