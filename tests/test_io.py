"""Atomic writes: the old file survives a failed write, and no temp file is left behind."""
from __future__ import annotations

import json
import os

import pytest

from vitkit.io import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(path, {"k": [1, 2]})
    assert json.loads(path.read_text()) == {"k": [1, 2]}
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["x.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b'{"a": ', "is not valid JSON"),
    (b'{"a": NaN}', "is not valid JSON (NaN is not a JSON value"),
    (b"[1, 2]", "holds a JSON array, not a JSON object"),
    (b'"x"', "holds a JSON string, not a JSON object"),
])
def test_read_json_is_one_line_per_problem(tmp_path, content, words):
    from vitkit.errors import VitkitError
    from vitkit.io import read_json

    path = tmp_path / "latest.json"
    path.write_bytes(content)
    with pytest.raises(VitkitError, match=r"checkpoint index .*latest.json") as info:
        read_json(path, "checkpoint index", "delete the run dir and retrain")
    assert words in str(info.value) and str(info.value).endswith("delete the run dir and retrain")
    assert "\n" not in str(info.value)
    path.write_bytes(b'{"k": [1]}')
    assert read_json(path, "x", "y") == {"k": [1]}
    with pytest.raises(VitkitError, match="not found; fix it"):
        read_json(tmp_path / "none.json", "x", "fix it")
