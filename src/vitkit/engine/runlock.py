"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.vitkit.lock``.

The process that owns the run (rank 0 under torchrun) takes the lock before it reads or
writes anything in the run dir and keeps it until it exits. The operating system drops
the lock when the process dies (even under ``kill -9``), so a stale lock file never
blocks ``--resume``. A second writer is refused with one line naming the holder's pid.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from vitkit.errors import VitkitError
from vitkit.io import make_dir

LOCK_NAME = ".vitkit.lock"


class RunLock:
    """An exclusive, non-blocking lock on a run directory (a context manager)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise VitkitError(
                f"cannot create the run lock {self.path} ({exc.strerror}); pick a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise VitkitError(f"cannot lock {self.path} ({exc.strerror}); use a local --out") from None
            who = f"pid {holder}" if holder else "another process"
            raise VitkitError(f"{self.path.parent} is in use by another vitkit training ({who}); wait for it to "
                              "finish or pick another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def lock_run_dir(run_dir, owner: bool = True) -> RunLock | None:
    """Create ``run_dir`` and lock it when this process owns the run (``owner``); else None."""
    if not owner:
        return None
    return RunLock(make_dir(run_dir)).acquire()
