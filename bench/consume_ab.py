"""Consumers of this tree against an older revision, taking turns in one run.

    python bench/consume_ab.py --baseline REV [--workdir DIR] [--reps 5] [--messages 20000]

Each rep runs, for REV (checked out into a temporary git worktree), for this tree and for the
floor (plain os calls: bench/systems.py), one fresh process per measurement, each on a home of
its own under --workdir (the order alternates):
- steady: a long-lived process enqueues, dequeues and acks one message at a time, MESSAGES
  times (the steady state of a stream whose consumers keep up; its backlog stays at none);
- four consumers: MESSAGES enqueued, then four forked processes drain them, from the moment all
  four have opened their queue to the last one's empty dequeue.
It reports the median of each, and this tree's ratios to REV and to the floor, rep by rep
(time for steady, messages a second for four consumers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import ROOT, checked_out

# Runs with the tree under test first on sys.path (or, for the floor, bench/): argv is the
# system (ephq or floor), the mode, the home, the messages.
DRIVER = r"""
import json, multiprocessing, sys, time
system, mode, home, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
payload = json.dumps({"to": "someone@example.com", "subject": "hello", "body": "x" * 120})
if system == "ephq":
    from ephq import Queue

    class Client:
        def __init__(self):
            self.q = Queue(home, keep_leases=False)
        def put(self):
            self.q.enqueue_json("s", payload)
        def get(self):
            m = self.q.dequeue("s")
            return None if m is None else m.receipt
        def ack(self, receipt):
            self.q.ack("s", receipt)
else:
    from systems import FloorClient

    class Client:
        def __init__(self):
            self.c = FloorClient(home, True)
        def put(self):
            self.c.put(payload.encode())
        def get(self):
            got = self.c.get()
            return None if got is None else got[0]
        def ack(self, handle):
            self.c.ack(handle)

if mode == "steady":
    c = Client()
    c.put()
    c.ack(c.get())
    start = time.perf_counter()
    for _ in range(n):
        c.put()
        c.ack(c.get())
    print(json.dumps({"us": (time.perf_counter() - start) / n * 1e6}))
else:
    c = Client()
    for _ in range(n):
        c.put()
    del c

    def drain(barrier, out):
        mine = Client()
        barrier.wait()
        got = 0
        while (receipt := mine.get()) is not None:
            mine.ack(receipt)
            got += 1
        out.put(got)

    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=drain, args=(barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    got = sum(out.get() for _ in procs)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    assert got == n, (got, n)
    print(json.dumps({"rate": n / elapsed}))
"""
BENCH = Path(__file__).resolve().parent


def run(tree: Path | None, mode: str, home: str, messages: int) -> float:
    """One measurement in a fresh process: ephq from tree, or the floor when tree is None."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(BENCH if tree is None else tree)
    system = "floor" if tree is None else "ephq"
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, system, mode, home, str(messages)],
        env=env,
        cwd=home,  # not this checkout: the tree under test is the ephq imported
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = json.loads(out)
    return float(found["us"] if mode == "steady" else found["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ephq-bench-consume-", dir=args.workdir)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        with checked_out(args.baseline, work) as base:
            sides: list[tuple[str, Path | None]] = [
                ("baseline", base),
                ("this tree", ROOT),
                ("the floor", None),
            ]
            for rep in range(args.reps):
                for mode in ("steady", "four"):
                    for side, tree in sides if rep % 2 == 0 else sides[::-1]:
                        home = tempfile.mkdtemp(dir=work)
                        results.setdefault((side, mode), []).append(
                            run(tree, mode, home, args.messages)
                        )
                        shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"baseline {args.baseline}, {args.reps} reps of {args.messages:,} messages")
    for mode, unit in (("steady", "µs a cycle"), ("four", "msgs/s, four consumers")):
        before, this = results[("baseline", mode)], results[("this tree", mode)]
        floor = results[("the floor", mode)]
        ratios = [round(t / b, 2) for t, b in zip(this, before, strict=True)]
        to_floor = [round(t / f, 2) for t, f in zip(this, floor, strict=True)]
        print(
            f"{mode:7} baseline {statistics.median(before):9.1f}  this tree "
            f"{statistics.median(this):9.1f}  the floor {statistics.median(floor):9.1f} {unit}"
            f"; by rep this/baseline {ratios}, this/the floor {to_floor}"
        )


if __name__ == "__main__":
    main()
