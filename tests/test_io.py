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
