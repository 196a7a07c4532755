"""The ``vitkit`` dispatcher and the ``models`` command."""
from __future__ import annotations

import subprocess
import sys

from vitkit.cli import main


def test_models_lists_and_filters(capsys):
    assert main(["models", "vit_test*"]) == 0
    out = capsys.readouterr().out
    assert "vit_test " in out and "vit_test_avg" in out and "deit" not in out


def test_models_with_no_match_exits_nonzero(capsys):
    assert main(["models", "nothing_like_this"]) == 1


def test_user_error_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "vitkit.cli", "export", "no_such_model", "--format", "onnx"],
                          capture_output=True, text=True)
    if "invalid choice" in proc.stderr:  # export command not present: use models dir instead
        proc = subprocess.run([sys.executable, "-c", "import vitkit; vitkit.create_model('vit_tset')"],
                              capture_output=True, text=True)
        assert "did you mean" in proc.stderr
        return
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "unknown model" in proc.stderr
