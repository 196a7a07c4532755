"""Files in and out: atomic writes, checked JSON reads, output folders.

Every file vitkit publishes (weights, config.json, checkpoints, metrics) goes through
:func:`atomic_write_bytes`: write a temp file in the same directory, fsync, rename, so a
reader never sees a half-written file, even after a kill. Every JSON file vitkit reads back
goes through :func:`read_json`: a missing, non-UTF-8, invalid or wrongly shaped file is one
``VitkitError`` line.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from vitkit.errors import VitkitError


def make_dir(path, flag: str = "--out") -> Path:
    """Create directory ``path`` (and parents), or say in one line why it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise VitkitError(f"{flag} {path} is a file, not a directory; pick another {flag}") from None
    except NotADirectoryError:
        raise VitkitError(f"{flag} {path} lies under a file, not a directory; pick another {flag}") from None
    except PermissionError:
        raise VitkitError(f"{flag} {path}: permission denied (read-only place?); pick a writable {flag}") from None
    except OSError as exc:
        raise VitkitError(f"{flag} {path}: cannot create it ({exc.strerror}); pick another {flag}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise VitkitError(f"{flag} {path} is not writable; pick a writable {flag} or fix its permissions")
    return path


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


def read_json(path, what: str, fix: str, expect: type = dict) -> Any:
    """The JSON value in ``path`` (of type ``expect``), or one line naming ``what`` it is and ``fix``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text, parse_constant=_no_constant)
    except FileNotFoundError:
        raise VitkitError(f"{what} {path} not found; {fix}") from None
    except OSError as exc:
        raise VitkitError(f"cannot read {what} {path} ({exc.strerror}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise VitkitError(f"{what} {path} is not UTF-8 text (byte {exc.start}); the file is corrupt: {fix}") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise VitkitError(f"{what} {path} is not valid JSON ({_first_line(exc)}); the file is corrupt: {fix}") from None
    if not isinstance(data, expect):
        raise VitkitError(f"{what} {path} holds a JSON {_json_type(data)}, not a JSON {_json_type(expect())}; "
                          f"the file is corrupt: {fix}")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def atomic_write_json(path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2).encode())


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    atomic_write_bytes(path, text.encode())
