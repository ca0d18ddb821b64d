"""The recycling pool's size against what it costs: drain speed, the next burst, disk kept.

    python bench/pool.py [--messages 5000] [--reps 3] [--workdir DIR]

For each pool size (0 = unlink every acked file), side by side in each repetition, on a fresh
stream: write a backlog of M messages and flush it to disk (so its files have blocks, as durable
enqueues leave them), drain it with dequeue+ack, count what the pool kept, then enqueue the next
burst of M messages durably one at a time (what a kept file saves a producer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ephq import Queue
from ephq.files import pool

PAYLOAD = {"to": "someone@example.com", "subject": "hello", "body": "x" * 120}  # ~200 bytes
SIZES = (0, 128, 1024, 4096, 16384)


def one_size(home: str, slots: int, messages: int) -> tuple[float, int, int, float]:
    """Median dequeue+ack µs, files kept, bytes kept, median µs of the next burst's enqueues."""
    saved, pool.SLOTS = pool.SLOTS, slots
    try:
        fast = Queue(home, fsync=False)
        for start in range(0, messages, 1000):
            fast.enqueue_many("s", [PAYLOAD] * min(1000, messages - start))
        os.sync()
        q = Queue(home)
        drain = []
        for _ in range(messages):
            start_s = time.perf_counter()
            m = q.dequeue("s", visibility=300)
            assert m is not None and m.receipt is not None
            q.ack("s", m.receipt)
            drain.append(time.perf_counter() - start_s)
        tmp = Path(home, "s", "pool")
        kept = [p.stat() for p in tmp.iterdir() if p.name.endswith(pool.FREE_SUFFIX)]
        burst = []
        for _ in range(messages):
            start_s = time.perf_counter()
            q.enqueue("s", PAYLOAD)
            burst.append(time.perf_counter() - start_s)
    finally:
        pool.SLOTS = saved
    return (
        statistics.median(drain) * 1e6,
        len(kept),
        sum(s.st_blocks * 512 for s in kept),
        statistics.median(burst) * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="ephq-bench-pool-", dir=args.workdir)
    runs: dict[int, list[tuple[float, int, int, float]]] = {size: [] for size in SIZES}
    try:
        for rep in range(args.reps):
            for size in SIZES:
                home = os.path.join(base, f"{size}-{rep}")
                runs[size].append(one_size(home, size, args.messages))
                shutil.rmtree(home)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.messages} messages, {args.reps} repetitions, median (min-max) over them\n")
    print("| pool slots | dequeue+ack µs | files kept | disk kept | next burst: enqueue µs |")
    print("|---|---|---|---|---|")
    for size, results in runs.items():
        cols = []
        for i, unit in ((0, ""), (1, ""), (2, "MiB"), (3, "")):
            values = [r[i] / (2**20 if unit else 1) for r in results]
            fmt = "{:,.1f}" if unit else "{:,.0f}"
            cols.append(
                f"{fmt.format(statistics.median(values))} "
                f"({fmt.format(min(values))}-{fmt.format(max(values))}){' ' + unit if unit else ''}"
            )
        print(f"| {size:,}{' (unlink)' if size == 0 else ''} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
