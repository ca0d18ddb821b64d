"""Benchmark of the storage engine: enqueue and dequeue+ack rates, and whether depth costs.

    python bench/engine.py [--workdir DIR] [--quick] [--reps 3]

Phases, each run side by side in one invocation so the ratios are fair on a noisy machine:
- enqueue, durable (fsync) and not, in one process and in four at once;
- steady state: enqueue+dequeue+ack one message at a time over a small backlog, with acked
  files recycled (the default) and with them unlinked;
- dequeue+ack, in one process and four at once;
- depth: dequeue+ack at a depth of 1,000 and of 1,000,000 (100,000 with --quick), both in a
  long-lived process and in fresh processes (what every `ephq dequeue` is), whose time is
  measured inside the process around the operation and also for the whole process.
Per-operation latencies give median, P90 and P99; rates are messages per second, as the median
(and min-max) over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from placement import spread_out

from ephq import Queue
from ephq.files import pool

PAYLOAD = {"to": "someone@example.com", "subject": "hello", "body": "x" * 120}  # ~200 bytes


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(latencies_s: list[float]) -> dict[str, float]:
    us = [v * 1e6 for v in latencies_s]
    return {
        "median_us": statistics.median(us),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
    }


def enqueue_loop(home: str, stream: str, count: int, fsync: bool) -> list[float]:
    q = Queue(home, fsync=fsync)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        q.enqueue(stream, PAYLOAD)
        times.append(time.perf_counter() - start)
    return times


def drain_loop(home: str, stream: str, count: int) -> list[float]:
    q = Queue(home)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        m = q.dequeue(stream, visibility=300)
        if m is None:
            break
        assert m.receipt is not None
        q.ack(stream, m.receipt)
        times.append(time.perf_counter() - start)
    return times


def steady_loop(home: str, stream: str, count: int, fsync: bool) -> list[float]:
    """Enqueue, dequeue and ack one message at a time over a small backlog."""
    q = Queue(home, fsync=fsync)
    q.enqueue_many(stream, [PAYLOAD] * 10)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        q.enqueue(stream, PAYLOAD)
        m = q.dequeue(stream, visibility=300)
        assert m is not None and m.receipt is not None
        q.ack(stream, m.receipt)
        times.append(time.perf_counter() - start)
    return times


def fill(home: str, stream: str, depth: int) -> None:
    q = Queue(home, fsync=False)
    for start in range(0, depth, 5000):
        q.enqueue_many(stream, [PAYLOAD] * min(5000, depth - start))


def _worker(args: tuple[str, str, str, int, bool]) -> list[float]:
    kind, home, stream, count, fsync = args
    if kind == "enqueue":
        return enqueue_loop(home, stream, count, fsync)
    return drain_loop(home, stream, count)


def parallel(kind: str, home: str, stream: str, count: int, procs: int, fsync: bool) -> float:
    """Messages per second over all processes, from the first start to the last finish."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        start = time.perf_counter()
        results = pool.map(_worker, [(kind, home, stream, count, fsync)] * procs)
        elapsed = time.perf_counter() - start
    return sum(len(r) for r in results) / elapsed


FRESH = """
import sys, time
t0 = time.perf_counter()
from ephq import Queue
q = Queue(sys.argv[1])
t1 = time.perf_counter()
m = q.dequeue(sys.argv[2], visibility=300)
q.ack(sys.argv[2], m.receipt)
t2 = time.perf_counter()
print(t2 - t1, t2 - t0)
"""


def fresh_ops(home: str, stream: str, runs: int) -> tuple[list[float], list[float]]:
    """Per fresh process: the dequeue+ack alone, and the whole process's wall time."""
    ops, walls = [], []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", FRESH, home, stream],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        walls.append(time.perf_counter() - start)
        ops.append(float(out.stdout.split()[0]))
    return ops, walls


def machine() -> dict[str, Any]:
    fs = subprocess.run(
        ["df", "-T", "."], capture_output=True, text=True, check=False
    ).stdout.split("\n")[1]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "filesystem": fs.split()[1] if fs else "?",
    }


def run(workdir: str, quick: bool, reps: int) -> dict[str, Any]:
    n = 500 if quick else 2000
    deep = 100_000 if quick else 1_000_000
    results: dict[str, list[Any]] = {}

    def record(key: str, value: Any) -> None:
        results.setdefault(key, []).append(value)

    base = tempfile.mkdtemp(prefix="ephq-bench-", dir=workdir)
    try:
        for rep in range(reps):
            home = os.path.join(base, f"rep{rep}")
            for fsync in (True, False):
                label = "fsync" if fsync else "no-fsync"
                lat = enqueue_loop(home, f"e-{label}", n, fsync)
                record(f"enqueue 1 proc, {label}", (n / sum(lat), summary(lat)))
                record(
                    f"enqueue 4 procs, {label}",
                    (parallel("enqueue", home, f"e4-{label}", n // 2, 4, fsync), None),
                )
            for slots in (pool.SLOTS, 0):
                saved, pool.SLOTS = pool.SLOTS, slots
                for fsync in (True, False):
                    label = ("fsync" if fsync else "no-fsync") + (
                        ", unlink on ack" if slots == 0 else ""
                    )
                    lat = steady_loop(home, f"s-{int(fsync)}-{slots}", n, fsync)
                    record(f"steady enqueue+dequeue+ack, {label}", (n / sum(lat), summary(lat)))
                pool.SLOTS = saved
            lat = drain_loop(home, "e-fsync", n)
            record("dequeue+ack 1 proc", (len(lat) / sum(lat), summary(lat)))
            rate4 = parallel("drain", home, "e4-fsync", n, 4, True)
            record("dequeue+ack 4 procs", (rate4, None))
            shutil.rmtree(home, ignore_errors=True)

        depths = (1000, deep)
        os.mkdir(os.path.join(base, "deep"))
        spread_out(os.path.join(base, "deep"))
        for depth in depths:
            fill(os.path.join(base, "deep", f"depth{depth}"), "d", depth + n * reps + 20 * reps)
        os.sync()  # measure the queue, not the write-back of the gigabytes the fill just wrote
        for _ in range(reps):
            for depth in depths:  # side by side, so noise falls on both alike
                home = os.path.join(base, "deep", f"depth{depth}")
                lat = drain_loop(home, "d", n)
                record(
                    f"depth {depth}: dequeue+ack long-lived", (len(lat) / sum(lat), summary(lat))
                )
                ops, walls = fresh_ops(home, "d", 20)
                record(
                    f"depth {depth}: dequeue+ack fresh process (op)",
                    (1 / statistics.median(ops), summary(ops)),
                )
                record(
                    f"depth {depth}: fresh process wall",
                    (1 / statistics.median(walls), summary(walls)),
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"machine": machine(), "quick": quick, "reps": reps, "results": results}


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"ephq engine benchmark, {m['date']}: Python {m['python']}, {m['cpus']} CPUs, "
        f"Linux {m['kernel']}, {m['filesystem']}; {data['reps']} repetitions",
        "",
        "| phase | msgs/s median (min-max) | median µs | P90 µs | P99 µs |",
        "|---|---|---|---|---|",
    ]
    for key, runs in data["results"].items():
        rates = [r[0] for r in runs]
        lat = [r[1] for r in runs if r[1] is not None]
        cells = ["", "", ""]
        if lat:
            cells = [
                f"{statistics.median(x[k] for x in lat):.0f}"
                for k in ("median_us", "p90_us", "p99_us")
            ]
        lines.append(
            f"| {key} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
            + " | ".join(cells)
            + " |"
        )
    res = data["results"]
    deep = [k for k in res if k.startswith("depth ") and not k.startswith("depth 1000:")]
    for kind in ("long-lived", "fresh process (op)", "fresh process wall"):
        shallow = statistics.median(
            r[0]
            for r in res[
                f"depth 1000: dequeue+ack {kind}"
                if "wall" not in kind
                else "depth 1000: fresh process wall"
            ]
        )
        key = next(k for k in deep if k.endswith(kind))
        ratio = shallow / statistics.median(r[0] for r in res[key])
        lines.append(
            f"\ndepth cost, {kind}: rate at 1k / rate at {key.split(':')[0][6:]} = {ratio:.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    data = run(args.workdir, args.quick, args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    print(report(data))


if __name__ == "__main__":
    main()
