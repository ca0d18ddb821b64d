"""What a drain costs in Python once it checks what it reads, without ephq, against ephq.

    python bench/checked_floor.py [--messages 5000] [--reps 5] [--workdir /dev/shm]

The floor of `bench/run.py` drains with three calls a message (rename into inflight/, read,
unlink) and trusts every name and byte. ephq may not: a name is parsed before it is used, a
lease carries its deadline and a token in its name, a file is opened without following links
and read only if it is a regular file of a sane size, its record is parsed and must be the
message its name says, and the consumer gets a message with its times. Each variant below adds
one of those steps to the one before, written as plainly as Python allows; the last row is
ephq's own dequeue+ack. All drain the same records (ephq's format), side by side, in turn.
Where no disk hides it (tmpfs), this says how much of ephq's distance from the floor any
Python queue that keeps those rules would have, and how much is ephq's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ephq import Queue
from ephq.files.record import encode
from ephq.ids import IdSource, id_time_ns

PAYLOAD = json.dumps({"to": "someone@example.com", "subject": "hello", "body": "x" * 120})
READY = re.compile(r"([0-9a-f]{24})\.(\d{1,9})", re.ASCII)
LEASED = re.compile(r"([0-9a-f]{16})\.([0-9a-f]{24})\.(\d{1,9})\.([0-9a-f]{8})", re.ASCII)
MAX_BYTES = 1 << 21
SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # (as record.py)


class Delivery(NamedTuple):
    id: str
    receipt: str
    data: object
    attempts: int
    enqueued_at: datetime
    visible_until: datetime


def fill(path: str, count: int) -> None:
    """count ready messages, as ephq writes them, in a flat ready/."""
    ids = IdSource()
    for sub in ("ready", "inflight"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    now = time.time_ns()
    for n in range(count):
        message_id = ids.next(now + n)
        content = encode(message_id, "s", id_time_ns(message_id), PAYLOAD, {})
        fd = os.open(f"{path}/ready/{message_id}.0", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, content)
        os.close(fd)


def drain(path: str, level: int) -> int:
    """Dequeue and ack every message, with the checks up to level (0: the floor)."""
    ready, inflight = f"{path}/ready", f"{path}/inflight"
    names = sorted(os.listdir(ready), reverse=True)
    done = 0
    while names:
        name = names.pop()
        attempts = 0
        if level >= 1:  # names are parsed, a lease's name says until when and whose
            match = READY.fullmatch(name)
            if match is None:
                continue
            message_id, attempts = match[1], int(match[2]) + 1
            deadline = time.time_ns() + 30_000_000_000
            token = os.urandom(4).hex()
            leased = f"{deadline:016x}.{message_id}.{attempts}.{token}"
        else:
            leased = name
        try:
            os.rename(f"{ready}/{name}", f"{inflight}/{leased}")
        except FileNotFoundError:
            continue
        dest = f"{inflight}/{leased}"
        if level >= 2:  # no link followed, only a regular file of a sane size read
            fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                    continue
                raw = os.read(fd, st.st_size + 1)
            finally:
                os.close(fd)
        else:
            with open(dest, "rb") as handle:
                raw = handle.read()
        if level >= 3:  # the record parses, and is the message its name says
            text = raw.decode()
            record, end = SCAN(text, 0)
            if end != len(text) or record.get("id") != message_id:
                continue
            data = record["data"]
            if level >= 4:  # what a consumer is handed, with its times
                Delivery(
                    message_id,
                    leased,
                    data,
                    attempts,
                    datetime.fromtimestamp(id_time_ns(message_id) / 1e9, timezone.utc),
                    datetime.fromtimestamp(deadline / 1e9, timezone.utc),
                )
        if level >= 1:  # ack: the receipt is parsed before it names a file
            parsed = LEASED.fullmatch(leased)
            if parsed is None:
                continue
        os.unlink(dest)
        done += 1
    return done


def ephq_drain(path: str, count: int) -> Callable[[], int]:
    fast = Queue(path, fsync=False)
    payload = json.loads(PAYLOAD)
    for start in range(0, count, 5000):
        fast.enqueue_many("s", [payload] * min(5000, count - start))
    q = Queue(path)

    def run() -> int:
        done = 0
        while (m := q.dequeue("s", visibility=30)) is not None:
            q.ack("s", m.receipt or "")
            done += 1
        return done

    return run


VARIANTS = (
    "the floor: rename, read, unlink",
    "+ names parsed; a lease named with its deadline and token",
    "+ opened without following links; a regular file of a sane size",
    "+ the record parsed, and its id checked",
    "+ a message handed over with its times",
    "ephq: dequeue + ack",
)


def once(workdir: str, variant: int, count: int) -> float:
    path = os.path.join(workdir, "checked-floor")
    shutil.rmtree(path, ignore_errors=True)
    try:
        if variant < 5:
            fill(path, count)
            start = time.perf_counter()
            done = drain(path, variant)
        else:
            run = ephq_drain(path, count)
            start = time.perf_counter()
            done = run()
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(path, ignore_errors=True)
    if done != count:
        raise SystemExit(f"{VARIANTS[variant]}: drained {done} of {count}")
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default="/dev/shm")
    args = parser.parse_args()
    times: list[list[float]] = [[] for _ in VARIANTS]
    for rep in range(args.reps):
        order = list(range(len(VARIANTS)))
        order = order[rep % len(order) :] + order[: rep % len(order)]
        for variant in order:
            times[variant].append(once(args.workdir, variant, args.messages))
    floor = statistics.median(times[0])
    print(f"drain of {args.messages} messages in {args.workdir}, {args.reps} reps in turn\n")
    print("| variant | µs a message, median (min-max) | x the floor |")
    print("|---|---|---|")
    for name, got in zip(VARIANTS, times, strict=True):
        median = statistics.median(got)
        print(f"| {name} | {median:.1f} ({min(got):.1f}-{max(got):.1f}) | {median / floor:.2f} |")


if __name__ == "__main__":
    main()
