"""Reading the database without leasing anything: what peek, stats, streams, leases and export
show, and when the next message is due. (stats dead-letters what ran out of attempts first, as
the file backend's reaper does.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import BadInput, NotFound
from ..ids import id_time_ns, is_stream_name, parse_receipt
from ..message import Exported, Lease, Message, StreamStats, live_metadata, utc_from_ns
from .connection import Connections
from .rows import NS, ROW, NotAMessage, iso_utc, looked_at, vet

# Messages of a stream that ran out of attempts, dead-lettered: stats runs this first, as the
# file backend's reaper does (the claim dead-letters what it picks).
_BURY_SPENT = """
UPDATE ephq.messages m SET dead = true, token = NULL, visible_at = %(now)s,
    meta = m.meta || jsonb_build_object('dead', jsonb_build_object(
        'stream', m.stream,
        'error', CASE WHEN m.token IS NOT NULL THEN 'lease expired'
                 ELSE 'delivered ' || m.attempts || ' times; max_attempts is ' || c.max_attempts
                 END,
        'attempts', m.attempts,
        'died_at', %(died_at)s::text))
FROM (SELECT COALESCE((SELECT max_attempts FROM ephq.streams WHERE name = %(stream)s), 5)
      AS max_attempts) c
WHERE m.stream = %(stream)s AND NOT m.dead AND m.visible_at <= %(now)s
  AND m.attempts >= c.max_attempts
"""

# What an id is (ids.py), for the oldest message's age: a row with another id is no message.
_AN_ID = "^[0-9a-f]{24}$"


def require_stream(cur: Any, stream: str, where: str) -> None:
    """NotFound, naming the streams there are, unless the stream exists."""
    cur.execute("SELECT 1 FROM ephq.streams WHERE name = %s", (stream,))
    if cur.fetchone() is None:
        cur.execute("SELECT name FROM ephq.streams ORDER BY name LIMIT 10")
        known = ", ".join(r[0] for r in cur.fetchall()) or "none yet"
        raise NotFound(f"no stream {stream!r} in {where} (streams: {known})")


def peek(db: Connections, stream: str, count: int, dead: bool, now: int) -> list[Message]:
    with db.cursor(f"peek at stream {stream!r}") as cur:
        # What the next dequeue would lease: not what it would dead-letter instead.
        cur.execute(
            f"""SELECT {ROW} FROM ephq.messages m
                WHERE stream = %(stream)s AND dead = %(dead)s AND visible_at <= %(now)s
                  AND (%(dead)s OR attempts < COALESCE((SELECT max_attempts
                       FROM ephq.streams WHERE name = %(stream)s), 5))
                ORDER BY id LIMIT %(count)s""",
            {"stream": stream, "dead": dead, "now": now, "count": count},
        )
        rows = cur.fetchall()
    return readable(rows, lambda row: looked_at(stream, row, dead))


def readable(rows: list[Any], read: Callable[[Any], Message]) -> list[Message]:
    """The rows that are messages, read; the others are left for the consumer that leases
    them, or check, to set aside (as the file backend leaves a file it only looks at)."""
    found = []
    for row in rows:
        try:
            found.append(read(row))
        except NotAMessage:
            pass
    return found


def stats(db: Connections, stream: str, now: int) -> StreamStats:
    with db.cursor(f"read the statistics of stream {stream!r}") as cur:
        require_stream(cur, stream, db.where)
        cur.execute(_BURY_SPENT, {"stream": stream, "now": now, "died_at": iso_utc(now)})
        cur.execute(
            """SELECT
                count(*) FILTER (WHERE NOT dead AND visible_at <= %(now)s),
                count(*) FILTER (WHERE NOT dead AND visible_at > %(now)s AND token IS NULL),
                count(*) FILTER (WHERE NOT dead AND visible_at > %(now)s
                                 AND token IS NOT NULL),
                count(*) FILTER (WHERE dead),
                min(id) FILTER (WHERE NOT dead AND visible_at <= %(now)s AND id ~ %(an_id)s)
            FROM ephq.messages WHERE stream = %(stream)s""",
            {"stream": stream, "now": now, "an_id": _AN_ID},
        )
        ready, delayed, inflight, dead, oldest = cur.fetchone() or (0, 0, 0, 0, None)
        # A group's waiting messages count as ready.
        cur.execute(
            "SELECT count(*), min(id) FILTER (WHERE id ~ %s) FROM ephq.waiting WHERE stream = %s",
            (_AN_ID, stream),
        )
        waiting, first_waiting = cur.fetchone() or (0, None)
        ready += waiting
        if first_waiting is not None and (oldest is None or first_waiting < oldest):
            oldest = first_waiting
    age = None if oldest is None else max(0.0, (now - id_time_ns(oldest)) / NS)
    return StreamStats(stream, ready, delayed, inflight, dead, age)


def streams(db: Connections) -> list[str]:
    """The streams' names; a row written by hand under a name no stream may have is left out
    (check reports it), as the file backend lists no directory that names no stream."""
    with db.cursor("list streams") as cur:
        cur.execute("SELECT name FROM ephq.streams ORDER BY name")
        return [row[0] for row in cur.fetchall() if is_stream_name(row[0])]


def seconds_until_due(db: Connections, stream: str, dead: bool, now: int) -> float:
    """Until the stream's next lease or delay runs out, at most a second."""
    with db.cursor(f"read stream {stream!r}") as cur:
        cur.execute(
            """SELECT min(visible_at) FROM ephq.messages
               WHERE stream = %s AND dead = %s AND visible_at > %s""",
            (stream, dead, now),
        )
        row = cur.fetchone()
    due = None if row is None else row[0]
    return 1.0 if due is None else min(1.0, max(0.0, (due - now) / NS))


def next_delayed_ns(db: Connections, stream: str, dead: bool, now: int) -> int | None:
    with db.cursor(f"read stream {stream!r}") as cur:
        cur.execute(
            """SELECT min(visible_at) FROM ephq.messages
               WHERE stream = %s AND dead = %s AND visible_at > %s AND token IS NULL""",
            (stream, dead, now),
        )
        row = cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def leases(db: Connections, stream: str, now: int) -> list[Lease]:
    """The stream's leases, each with the worker holding it if a live one announced it."""
    with db.cursor(f"list the leases of stream {stream!r}") as cur:
        require_stream(cur, stream, db.where)
        cur.execute(
            """SELECT h.host, h.pid, h.worker, h.started_at, h.leases FROM ephq.holders h
               WHERE h.stream = %s
                 AND h.backend_pid IN (SELECT pid FROM pg_stat_activity)""",
            (stream,),
        )
        held: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        for host, pid, worker, started_at, announced in cur.fetchall():
            if not isinstance(announced, dict):
                continue  # not what a worker writes
            who = {"host": host, "pid": pid, "worker": worker, "started_at": started_at}
            for receipt, when in announced.items():
                try:
                    lease = parse_receipt(receipt).lease
                except BadInput:
                    continue
                if isinstance(when, int):  # what a worker wrote: anything else says nothing
                    held[(lease.id, lease.token or "")] = (who, when)
        cur.execute(
            """SELECT id, attempts, visible_at, token, dead FROM ephq.messages
               WHERE stream = %s AND token IS NOT NULL AND visible_at > %s
               ORDER BY visible_at, id""",
            (stream, now),
        )
        rows = cur.fetchall()
    found = []
    for message_id, attempts, visible_at, token, dead in rows:
        holder: dict[str, Any] | None = None
        leased_at: int | None = None
        if (message_id, token) in held:
            holder, leased_at = held[(message_id, token)]
        found.append(
            Lease(
                message_id,
                stream,
                attempts,
                None if leased_at is None else utc_from_ns(leased_at),
                utc_from_ns(visible_at),
                holder,
                dead,
            )
        )
    return found


def export(db: Connections, stream: str, now: int) -> Iterator[Exported]:
    """Every message of the stream and its dead letters, in one consistent snapshot."""
    with db.cursor(f"export stream {stream!r}") as cur:
        require_stream(cur, stream, db.where)
    conn = db.get()
    # A server-side cursor in one transaction: a consistent snapshot, read in slices.
    with (
        db.translated(f"export stream {stream!r}"),
        conn.transaction(),
        conn.cursor(name="ephq_export") as cur,
    ):
        cur.itersize = 1000
        cur.execute(
            """SELECT id, dead, attempts, visible_at, token, data, meta, grp
               FROM ephq.messages WHERE stream = %(stream)s
               UNION ALL
               SELECT id, false, attempts, visible_at, NULL, data, meta, grp
               FROM ephq.waiting WHERE stream = %(stream)s
               ORDER BY 2, 1""",
            {"stream": stream},
        )
        for message_id, dead, attempts, visible_at, token, data, stored, group in cur:
            try:
                vet(message_id, data, stored)
            except NotAMessage:
                continue  # left for the consumer that leases it, or check, to set aside
            if dead:
                state = "dead"
            elif visible_at <= now:
                state = "ready"
            else:
                state = "delayed" if token is None else "inflight"
            meta = stored if dead else live_metadata(stored, stream)
            if group is not None:
                meta = {**meta, "group": group}
            due = visible_at if state == "delayed" else None
            yield Exported(message_id, state, attempts, due, meta, data)
