"""The run lock under a race: N processes released at once all try to take one run dir's lock.

Each round forks ``--procs`` processes that wait on one barrier, then call
:func:`vitkit.engine.runlock.lock_run_dir` on the same fresh directory (what ``vitkit train``
does first thing, rank 0). A winner holds the lock for ``--hold`` seconds. The round passes
when exactly one process got the lock and every other one was refused with the one-line
error naming the winner's pid. This measures the lock-taking function, not whole trainings.

    python3 benchmarks/lock_race.py --procs 100 --rounds 10
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

from vitkit.engine.runlock import lock_run_dir
from vitkit.errors import VitkitError


def _contender(run_dir: str, barrier, results, hold: float) -> None:
    barrier.wait()
    try:
        lock = lock_run_dir(run_dir)
    except VitkitError as exc:
        results.put(("refused", os.getpid(), str(exc)))
        return
    results.put(("won", os.getpid(), ""))
    time.sleep(hold)
    lock.release()


def one_round(run_dir: Path, procs: int, hold: float) -> dict:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_contender, args=(str(run_dir), barrier, results, hold)) for _ in range(procs)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=120)
    winners = [pid for kind, pid, _ in outcomes if kind == "won"]
    refused = [msg for kind, _, msg in outcomes if kind == "refused"]
    named = bool(winners) and all(f"(pid {winners[0]})" in msg and "\n" not in msg for msg in refused)
    return {"winners": len(winners), "refused": len(refused), "refusals_name_the_winner": named,
            "ok": len(winners) == 1 and len(refused) == procs - 1 and named}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--hold", type=float, default=2.0, help="seconds a winner keeps the lock (default 2)")
    args = p.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            r = one_round(Path(tmp) / f"run_{i}", args.procs, args.hold)
            rounds.append(r)
            print(f"round {i + 1}: {r['winners']} winner, {r['refused']} refused, "
                  f"refusals name the winner: {r['refusals_name_the_winner']}", flush=True)
    ok = sum(r["ok"] for r in rounds)
    print(json.dumps({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join([sys.executable, *sys.argv]), "procs": args.procs,
                      "rounds": args.rounds, "rounds_with_exactly_one_holder": ok}, indent=2))
    return 0 if ok == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
