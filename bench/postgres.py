"""ephq's PostgreSQL backend against the floor: the least SQL that keeps the same promises,
through the same driver, side by side in one run.

    pip install -e '.[postgres,test]'
    python bench/postgres.py                      # a throwaway server (tests/pgserver.py)
    python bench/postgres.py --url postgresql://… # or an existing one (its settings stated)

The floor: a table (id bigserial, visible_at, token, data); enqueue is one INSERT; a claim is
`UPDATE … WHERE id IN (SELECT … ORDER BY id FOR UPDATE SKIP LOCKED LIMIT n) RETURNING`; ack is
a DELETE by id and token (a batch's ids and tokens passed as text joined by commas, as ephq
passes them); all with autocommit, one statement per call, as ephq. Phases, each repeated
--reps times, the two systems taking turns every 50 messages within a phase (what a flush
costs drifts within seconds): enqueue N one at a time; dequeue+ack N one at a time; dequeue
100 and ack them, 5N in all, a turn a batch (ephq: one dequeue_many and one ack_many of the
receipts, as `ephq dequeue --max 100 | ephq ack s -`; the floor: one UPDATE and one DELETE);
four consumer processes draining N (timed from when all four are connected; one system, then
the other); and dequeue+ack at 1,000 and at --deep queued messages (ephq only: depth independence).
Reported: the median time per message, and ephq's time as a multiple of the floor's.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ephq import Queue

FLOOR_SCHEMA = """
DROP TABLE IF EXISTS floor_q;
CREATE TABLE floor_q (id bigserial PRIMARY KEY, visible_at bigint NOT NULL,
                      token text, data text NOT NULL);
"""


class Floor:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def enqueue(self, data: str) -> None:
        self.conn.execute(
            "INSERT INTO floor_q (visible_at, data) VALUES (%s, %s)", (time.time_ns(), data)
        )

    def take(self, n: int) -> list[tuple[int, str]]:
        now = time.time_ns()
        rows = self.conn.execute(
            """UPDATE floor_q SET token = %s, visible_at = %s WHERE id IN (
                   SELECT id FROM floor_q WHERE visible_at <= %s ORDER BY id
                   FOR UPDATE SKIP LOCKED LIMIT %s) RETURNING id, token, data""",
            (os.urandom(4).hex(), now + 30 * 10**9, now, n),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def ack(self, item: tuple[int, str]) -> None:
        self.conn.execute("DELETE FROM floor_q WHERE id = %s AND token = %s", item)

    def ack_all(self, items: list[tuple[int, str]]) -> None:
        # The arrays as text joined by commas, as ephq passes them (psycopg dumps a list at
        # about 2 µs an element).
        self.conn.execute(
            "DELETE FROM floor_q f USING unnest(string_to_array(%s, ',')::bigint[], "
            "string_to_array(%s, ',')) AS r(id, token) WHERE f.id = r.id AND f.token = r.token",
            (",".join([str(i) for i, _ in items]), ",".join([t for _, t in items])),
        )


class Ephq:
    def __init__(self, url: str) -> None:
        self.q = Queue(url=url)

    def enqueue(self, data: str) -> None:
        self.q.enqueue_json("bench", data)

    def take(self, n: int) -> list[str]:
        return [m.receipt or "" for m in self.q.dequeue_many("bench", n, visibility=30)]

    def ack(self, receipt: str) -> None:
        self.q.ack("bench", receipt)

    def ack_all(self, receipts: list[str]) -> None:
        self.q.ack_many("bench", receipts)


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FLOOR_SCHEMA)
        conn.execute("DROP SCHEMA IF EXISTS ephq CASCADE")
    Queue(url=url).configure("bench", max_attempts=5)


def _timed(call: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) / n * 1e6  # µs per message


def _fill(system: Any, payload: str, n: int) -> None:
    for _ in range(n):
        system.enqueue(payload)


def _drain(system: Any, n: int, batch: int) -> None:
    done = 0
    while done < n:
        got = system.take(batch)
        if not got:
            return
        if batch == 1:
            system.ack(got[0])
        else:
            system.ack_all(got)  # one statement for the batch, as `ephq ack s -` does
        done += len(got)


def _consumer(kind: str, url: str, results: Any, start: Any) -> None:
    system: Any = Floor(url) if kind == "floor" else Ephq(url)
    start.wait()  # connected and ready: the clock starts when all four are
    count = 0
    while got := system.take(1):
        system.ack(got[0])
        count += 1
    results.put(count)


def _four(kind: str, url: str, n: int) -> float:
    """µs per message for four consumer processes draining n, from the moment all four are
    connected (a process's start-up, ephq's heavier than the floor's, is not the drain)."""
    results: Any = multiprocessing.Queue()
    start: Any = multiprocessing.Barrier(5)
    procs = [
        multiprocessing.Process(target=_consumer, args=(kind, url, results, start))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    total = sum(results.get() for _ in procs)
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join()
    assert total == n, f"{kind}: drained {total} of {n}"
    return elapsed / n * 1e6


def _in_turns(
    systems: dict[str, Any], step: Callable[[Any, int], None], total: int, turn: int = 50
) -> dict[str, float]:
    """µs per message of each system doing step(system, k) for total messages, the systems
    taking turns every `turn` messages (who goes first alternating): what a flush costs this
    disk drifts within seconds, and turns this short put both under the same drift."""
    spent = dict.fromkeys(systems, 0.0)
    for number, done in enumerate(range(0, total, turn)):
        names = list(systems) if number % 2 == 0 else list(reversed(systems))
        for name in names:
            start = time.perf_counter()
            step(systems[name], min(turn, total - done))
            spent[name] += time.perf_counter() - start
    return {name: seconds / total * 1e6 for name, seconds in spent.items()}


def run(url: str, n: int, reps: int, deep: int) -> None:
    phases: dict[str, dict[str, list[float]]] = {}

    def note(phase: str, per_message: dict[str, float]) -> None:
        for kind, us in per_message.items():
            phases.setdefault(phase, {}).setdefault(kind, []).append(us)

    payload = '{"to": "ann@example.com", "template": "welcome"}'
    for rep in range(reps):
        _reset(url)
        systems: dict[str, Any] = {"floor": Floor(url), "ephq": Ephq(url)}
        note("enqueue", _in_turns(systems, lambda s, k: _fill(s, payload, k), n))
        note("dequeue+ack", _in_turns(systems, lambda s, k: _drain(s, k, 1), n))
        # Five times the messages: a batch's time is mostly its two commits' flushes.
        in_batches = 5 * n
        for system in systems.values():
            _fill(system, payload, in_batches)
        batches = _in_turns(systems, lambda s, k: _drain(s, k, 100), in_batches, turn=100)
        note("dequeue 100 + ack", batches)
        # Processes cannot take turns every 50 messages: one system's four, then the other's.
        for system in systems.values():
            _fill(system, payload, n)
        order = list(systems) if rep % 2 == 0 else list(reversed(systems))
        note("4 consumer processes", {kind: _four(kind, url, n) for kind in order})
    with psycopg.connect(url, autocommit=True) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit")
        }
    print(
        f"PostgreSQL {settings['server_version']}, fsync={settings['fsync']}, "
        f"synchronous_commit={settings['synchronous_commit']}; N={n}, {reps} repetitions\n"
    )
    print("| phase | floor µs/msg | ephq µs/msg | ephq / floor |")
    print("|---|---|---|---|")
    for phase, by_kind in phases.items():
        floor, ours = statistics.median(by_kind["floor"]), statistics.median(by_kind["ephq"])
        print(f"| {phase} | {floor:.0f} | {ours:.0f} | {ours / floor:.2f}x |")
    single = statistics.median(phases["dequeue+ack"]["ephq"])
    batched = statistics.median(phases["dequeue 100 + ack"]["ephq"])
    print(f"\nephq batch (100) dequeue+ack per message / single: {batched / single:.2f}x")
    _depth(url, deep)


def _depth(url: str, deep: int) -> None:
    times = {}
    for depth in (1000, deep):
        _reset(url)
        q = Queue(url=url)
        chunk = ['"x"'] * 10_000
        left = depth
        while left > 0:
            q.enqueue_many_json("bench", chunk[: min(left, 10_000)])
            left -= 10_000
        drain = functools.partial(_drain, Ephq(url), 200, 1)
        times[depth] = statistics.median(_timed(drain, 200) for _ in range(5))
    print(
        f"dequeue+ack at {deep:,} queued: {times[deep]:.0f} µs/msg, at 1,000: {times[1000]:.0f}"
        f" µs/msg: {times[deep] / times[1000]:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing server (default: a throwaway one)")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--deep", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.url:
        run(args.url, args.n, args.reps, args.deep)
        return
    from tests.pgserver import Server, binaries

    bin_dir = binaries()
    if bin_dir is None:
        sys.exit("no PostgreSQL server binaries: give --url")
    server = Server(bin_dir, durable=True)
    try:
        run(server.url, args.n, args.reps, args.deep)
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
