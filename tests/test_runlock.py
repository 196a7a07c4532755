"""One writer per run dir: the run lock, --out checks, checkpoint cleanup, file modes."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch

from vitkit.cli import main
from vitkit.engine.runlock import LOCK_NAME, RunLock, lock_run_dir
from vitkit.errors import VitkitError

TINY = ["--model", "vit_test", "--set", "model.img_size=8", "model.patch_size=2", "data.limit_train=64",
        "data.limit_val=16", "batch_size=16", "tensorboard=false", "progress=false", "threads=1",
        "schedule.warmup_steps=1"]

_HOLD = """
import sys, time
from vitkit.engine.runlock import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    first = lock_run_dir(tmp_path / "run")
    with pytest.raises(VitkitError, match=rf"in use by another vitkit training \(pid {os.getpid()}\)"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    with RunLock(tmp_path / "run") as again:  # released: free again
        assert again.held
    assert lock_run_dir(tmp_path / "other", owner=False) is None  # ranks > 0 take no lock


def test_lock_of_a_killed_process_never_blocks(tmp_path):
    proc = _holder(tmp_path / "run")
    with pytest.raises(VitkitError, match=f"pid {proc.pid}"):
        RunLock(tmp_path / "run").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(proc.pid)  # the stale file stays...
    RunLock(tmp_path / "run").acquire().release()  # ...and does not block


def test_two_trainers_on_one_out(tmp_path, capsys):
    """The second is refused (exit 2, one line naming the holder's pid); the first's run is intact.
    The first trainer runs in a thread: its lock is its own open file, which the second's flock meets."""
    from vitkit.engine.checkpoint import load_checkpoint
    from vitkit.registry import create_model

    out = tmp_path / "run"
    codes = []
    first = threading.Thread(target=lambda: codes.append(main(["train", *TINY, "epochs=3", "--out", str(out)])))
    first.start()
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).is_file() or not (out / LOCK_NAME).read_text().strip():
        assert first.is_alive() and time.monotonic() < deadline, codes
        time.sleep(0.001)
    assert main(["train", *TINY, "epochs=1", "--out", str(out)]) == 2
    first.join(timeout=300)
    assert codes == [0]
    err = capsys.readouterr().err.strip()
    assert f"in use by another vitkit training (pid {os.getpid()})" in err and "\n" not in err
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    state = load_checkpoint(out, create_model(out))  # every checksum verifies
    assert state["epoch"] == 3 and len(json.loads(state["history"])) == 3
    assert [p.name for p in (out / "checkpoint").iterdir() if p.is_dir()] == [
        json.loads((out / "checkpoint" / "latest.json").read_text())["dir"]]
    assert main(["eval", str(out), "--json"]) == 0


@pytest.mark.parametrize("where, words", [("file", "is a file"), ("under", "lies under a file"),
                                          ("readonly", "permission denied|not writable")])
def test_bad_out_is_one_line(tmp_path, capsys, where, words):
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "under": tmp_path / "f" / "run", "readonly": "/sys/vitkit_run"}[where]
    assert main(["train", *TINY, "epochs=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit train: error: --out") and re.search(words, err)
    assert "\n" not in err


def test_checkpoint_cleanup_touches_only_step_dirs(tmp_path):
    from vitkit.engine.checkpoint import save_checkpoint
    from vitkit.registry import create_model

    model = create_model("vit_test", img_size=8, patch_size=2)
    (tmp_path / "checkpoint" / "mine").mkdir(parents=True)
    (tmp_path / "checkpoint" / "notes.txt").write_text("keep")
    for step in (1, 2):
        state = {"epoch": step, "batch_in_epoch": 0, "global_step": step, "x": torch.zeros(1)}
        save_checkpoint(tmp_path, model, None, state)
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["latest.json", "mine", "notes.txt", "step_00000002_b000000"]


def test_run_files_respect_the_umask(tmp_path):
    from vitkit.io import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        lock_run_dir(tmp_path / "run").release()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "run" / LOCK_NAME).stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750
