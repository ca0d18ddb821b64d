"""Durable single enqueues of this tree against an older revision, taking turns in one run.

    python bench/enqueue_ab.py --baseline REV [--workdir DIR] [--rounds 40] [--chunk 50] [--kept N]
                               [--cycle]

Two long-lived producer processes, one running REV (checked out into a temporary git worktree)
and one this tree, each on a home of its own under --workdir, enqueue CHUNK messages in turn
for ROUNDS rounds (who goes first alternates). Taking turns in small chunks spreads the
machine's noise over both, where runs one after the other measure whichever was luckier. It
reports, per side, the mean and median time of an enqueue and the time spent in fsync and
fdatasync per enqueue, and this tree's ratios to REV. --kept N: each producer first enqueues N
messages and acks them, as a queue's consumers do, so that its enqueues can reuse the files the
acks kept (pool.py; N up to 4,096 are kept), as they do in a queue that is being drained.
--cycle: each timed step is an enqueue, a dequeue and an ack over a backlog of 10, the steady
state of a stream whose consumers keep up.
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

PRODUCER = r"""
import json, os, sys, time
spent = [0.0]
def timed(flush):
    def call(fd):
        start = time.perf_counter()
        flush(fd)
        spent[0] += time.perf_counter() - start
    return call
os.fsync, os.fdatasync = timed(os.fsync), timed(os.fdatasync)
from ephq import Queue
q = Queue(sys.argv[1])
payload = {"to": "someone@example.com", "subject": "hello", "body": "x" * 120}
kept, cycle = int(sys.argv[2]), sys.argv[3] == "cycle"
if cycle:
    for _ in range(10):
        q.enqueue("s", payload)
if kept:
    q.enqueue_many("s", [payload] * kept)
    while got := q.dequeue_many("s", 500):
        q.ack_many("s", [m.receipt for m in got])
q.enqueue("s", payload)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        start = time.perf_counter()
        q.enqueue("s", payload)
        if cycle:
            m = q.dequeue("s")
            q.ack("s", m.receipt)
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "fsync": spent[0]}), flush=True)
    spent[0] = 0.0
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--workdir", default=None, help="where the homes go (default: /tmp)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--kept", type=int, default=0, help="acked files to start with")
    parser.add_argument("--cycle", action="store_true", help="enqueue, dequeue and ack")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="ephq-bench-enqueue-", dir=args.workdir)
    try:
        with checked_out(args.baseline, workdir) as baseline:
            code = {"baseline": baseline, "this": ROOT}
            times, fsyncs = run(code, workdir, args.rounds, args.chunk, args.kept, args.cycle)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(times, fsyncs, args))


def run(
    code: dict[str, Path], workdir: str, rounds: int, chunk: int, kept: int, cycle: bool
) -> tuple[dict[str, list[float]], dict[str, float]]:
    procs = {}
    for side, root in code.items():
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": ""}
        env.pop("EPHQ_URL", None)
        procs[side] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PRODUCER,
                os.path.join(workdir, f"home-{side}"),
                str(kept),
                "cycle" if cycle else "enqueue",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            # `python -c` puts its working directory first on sys.path: from this tree's root,
            # both sides would import this tree's ephq whatever PYTHONPATH says.
            cwd=root,
        )
    times: dict[str, list[float]] = {side: [] for side in code}
    fsyncs: dict[str, float] = dict.fromkeys(code, 0.0)
    sides = list(code)
    for turn in range(rounds):
        for side in sides if turn % 2 == 0 else sides[::-1]:
            proc = procs[side]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{chunk}\n")
            proc.stdin.flush()
            got = json.loads(proc.stdout.readline())
            times[side] += got["times"]
            fsyncs[side] += got["fsync"]
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    return times, fsyncs


def report(
    times: dict[str, list[float]], fsyncs: dict[str, float], args: argparse.Namespace
) -> str:
    fs = (
        subprocess.run(
            ["df", "-T", args.workdir or tempfile.gettempdir()],
            capture_output=True,
            text=True,
            check=False,
        )
        .stdout.splitlines()[-1]
        .split()[1]
    )
    lines = [
        f"# durable single {'enqueue+dequeue+ack' if args.cycle else 'enqueue'}, "
        f"{args.rounds} rounds of {args.chunk} each ({fs}), {args.kept} acked files to start with",
        "",
        "| code | mean µs | median µs | P90 µs | flush µs per step |",
        "|---|---|---|---|---|",
    ]
    for side, ts in times.items():
        us = sorted(t * 1e6 for t in ts)
        lines.append(
            f"| {args.baseline[:10] if side == 'baseline' else 'this tree'} | "
            f"{statistics.mean(us):,.0f} | {statistics.median(us):,.0f} | "
            f"{us[int(len(us) * 0.9)]:,.0f} | {fsyncs[side] / len(ts) * 1e6:,.0f} |"
        )
    mean = statistics.mean(times["this"]) / statistics.mean(times["baseline"])
    median = statistics.median(times["this"]) / statistics.median(times["baseline"])
    lines += ["", f"this tree / {args.baseline[:10]}: mean {mean:.2f}x, median {median:.2f}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
