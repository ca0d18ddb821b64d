"""ephq's dequeue+ack by layer: the store alone, through the backend, through the Queue API.

    python bench/layers.py [--batches 12] [--batch 500] [--runs 3] [--workdir /dev/shm]

One process drains batches of messages through each layer in turn and keeps each layer's best
batch (the least disturbed by the rest of the machine): `store` claims and acks on the stream's
Store with a parsed receipt; `backend` goes through FileBackend (the stream's settings, the
receipt parsed, the store found); `queue` through the Queue API (every argument checked, errors
translated, leases kept); `queue, no keeping` with keep_leases=False. Each run is a fresh
process; the table gives the median of the runs and their range.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ephq import Queue
from ephq.ids import parse_receipt

PAYLOAD = {"to": "someone@example.com", "subject": "hello", "body": "x" * 120}
LAYERS = ("store", "backend", "queue", "queue, no keeping")
VISIBILITY_NS = 30_000_000_000


def _five() -> int:
    return 5  # the stream's max_attempts, as Store.claim asks for it


def one_run(home: str, batches: int, batch: int) -> dict[str, float]:
    """µs a message for each layer: the best of its batches."""
    shutil.rmtree(home, ignore_errors=True)
    fill = Queue(home, fsync=False, keep_leases=False)
    kept, plain = Queue(home), Queue(home, keep_leases=False)
    fill.enqueue("s", PAYLOAD)
    m = plain.dequeue("s")
    plain.ack("s", m.receipt or "" if m else "")
    time.sleep(1.1)  # the stream's directory settles, as any stream older than a second
    backend = plain._backend
    store = backend._stream("s").main  # type: ignore[attr-defined]

    def through_store() -> None:
        for _ in range(batch):
            (got,) = store.claim(1, VISIBILITY_NS, _five)
            store.ack(parse_receipt(got.receipt or "").lease)

    def through_backend() -> None:
        for _ in range(batch):
            (got,) = backend.dequeue("s", 1, VISIBILITY_NS, False)
            backend.ack("s", got.receipt or "")

    def through(q: Queue) -> Callable[[], None]:
        def drain() -> None:
            for _ in range(batch):
                got = q.dequeue("s", visibility=30)
                assert got is not None
                q.ack("s", got.receipt or "")

        return drain

    runs = dict(
        zip(LAYERS, (through_store, through_backend, through(kept), through(plain)), strict=True)
    )
    best = dict.fromkeys(LAYERS, float("inf"))
    for _ in range(batches):
        for layer, drain in runs.items():
            fill.enqueue_many("s", [PAYLOAD] * batch)
            start = time.perf_counter()
            drain()
            best[layer] = min(best[layer], (time.perf_counter() - start) / batch * 1e6)
    kept.close()
    shutil.rmtree(home, ignore_errors=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a run's process
    args = parser.parse_args()
    home = os.path.join(args.workdir, f"ephq-layers-{os.getpid()}")
    if args.one:
        print(json.dumps(one_run(home, args.batches, args.batch)))
        return
    got: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, __file__, "--one", *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for layer, value in json.loads(out).items():
            got[layer].append(value)
    print(f"dequeue+ack by layer in {args.workdir}, {args.runs} runs, best of {args.batches}")
    print(f"batches of {args.batch}\n")
    print("| layer | µs a message, median (min-max) |")
    print("|---|---|")
    for layer, values in got.items():
        median = statistics.median(values)
        print(f"| {layer} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) |")


if __name__ == "__main__":
    main()
