"""Atomic file writes: a reader never sees a half-written file, even after a kill.

Every file vitkit publishes (weights, config.json, checkpoints, metrics) goes through
:func:`atomic_write_bytes`: write a temp file in the same directory, fsync, rename.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2).encode())
