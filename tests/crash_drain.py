"""Run by the crash-state explorer in a fresh process for each state it checks.

    python -m tests.crash_drain HOME CLOCK_NS [KEY,...]

With a clock at CLOCK_NS: check, read the stream's settings, enqueue three messages (and one
with each dedup KEY), drain every stream and its dead letters (acking all), check --repair,
check again. Prints one JSON object: what check found first, the settings ([max_attempts,
visibility]), the messages drained ([id, data] in order), the ids and data of the three it
enqueued, the id each keyed enqueue returned ([id, key]: a new message's, or the one that
took the key), and what the last check left besides the quarantine.
An exception is printed as {"error": ...}.
"""

from __future__ import annotations

import itertools
import json
import sys
import traceback
from typing import Any

from ephq import Queue

STREAM = "s"
DRAIN_ROUNDS = 1000


def drain(home: str, clock_ns: int, keys: list[str]) -> dict[str, Any]:
    with Queue(home, clock=lambda: clock_ns, keep_leases=False) as q:
        first = [p.kind for p in q.check()]
        config = q.config(STREAM)
        settings = [config.max_attempts, config.visibility]
        after = [[q.enqueue(STREAM, {"after": i}), {"after": i}] for i in range(3)]
        keyed = [[q.enqueue(STREAM, {"key": k}, dedup_key=k), k] for k in keys]
        drained: list[list[Any]] = []
        # Every stream, until a round finds nothing: a dead-letter stream holds the stream's
        # dead letters as messages, which draining another may put there.
        for _ in range(DRAIN_ROUNDS):
            before = len(drained)
            for stream, dlq in itertools.product(q.streams(), (False, True)):
                for _ in range(DRAIN_ROUNDS):
                    got = q.dequeue_many(stream, 100, dlq=dlq)
                    if not got:
                        break
                    for m in got:
                        drained.append([m.id, m.data])
                        q.ack(stream, m.receipt or "")
                else:
                    return {"error": "the drain did not end"}
            if len(drained) == before:
                break
        else:
            return {"error": "the drain did not end"}
        q.check(repair=True)
        left = [repr(p) for p in q.check() if p.kind != "quarantined"]
    return {
        "first": first,
        "settings": settings,
        "drained": drained,
        "after": after,
        "keyed": keyed,
        "left": left,
    }


def main() -> None:
    try:
        keys = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else []
        result = drain(sys.argv[1], int(sys.argv[2]), keys)
    except Exception:
        result = {"error": traceback.format_exc()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
