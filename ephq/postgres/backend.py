"""The PostgreSQL backend: every operation of the Backend protocol as one SQL statement.

Time is the caller's clock (nanoseconds, as the file backend's), passed into each statement:
hosts sharing a database must keep their clocks in step (NTP), as processes sharing a file
store do. A lease is a row's state (token, visible_at), never an open transaction: nothing is
held while a handler runs. Stream names and ids are always parameters, never SQL text.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from ..backend import Holder, Progress, Waiter
from ..errors import BadInput, LeaseLost, NotFound
from ..ids import (
    IdSource,
    Receipt,
    check_stream_name,
    format_receipt,
    id_time_ns,
    is_id,
    new_token,
    parse_receipt,
)
from ..message import (
    CheckProblem,
    Exported,
    Lease,
    Message,
    StreamConfig,
    StreamStats,
    live_metadata,
    utc_from_ns,
)
from . import schema
from .connection import Connections

NS = 1_000_000_000
MAX_ERROR_CHARS = 4096
# This process ANALYZEs the table after adding this many rows, and ten times as many, ...
ANALYZE_FIRST = 1000
DEFAULTS = StreamConfig()

# The columns a delivery is built from, in this order.
_ROW = "m.id, m.attempts, m.visible_at, m.token, m.data, m.meta, m.grp"

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

_ENQUEUE_ONE = """
WITH added AS (
    INSERT INTO ephq.messages (stream, dead, id, visible_at, data)
    VALUES (%s, false, %s, %s, %s) RETURNING stream
)
SELECT pg_notify(ephq.channel(stream), stream) FROM added  -- ephq.ring, inlined
"""
_ENQUEUE_ONE_QUIET = """
INSERT INTO ephq.messages (stream, dead, id, visible_at, data) VALUES (%s, false, %s, %s, %s)
"""
_ENQUEUE_MANY = """
WITH added AS (
    INSERT INTO ephq.messages (stream, dead, id, visible_at, data)
    SELECT %(stream)s, false, i, %(visible)s, d
    FROM unnest(string_to_array(%(ids)s, ','), %(datas)b::text[]) AS t(i, d)
    RETURNING 1
)
SELECT CASE WHEN %(ring)s THEN ephq.ring(%(stream)s) END
FROM (SELECT count(*) FROM added) n
"""


def _enqueue_many_params(
    stream: str, visible: int, ids: list[str], datas: list[str], ring: bool
) -> dict[str, Any]:
    """_ENQUEUE_MANY's parameters. The ids (hex) go joined by commas and the data in binary:
    psycopg dumps a list as text at ~2 µs an element, in binary at a third of that."""
    return {
        "stream": stream,
        "visible": visible,
        "ids": ",".join(ids),
        "datas": datas,
        "ring": ring,
    }


# Deduplication keys: insert each, or take over one older than the stream's window; the keys
# returned are this transaction's. A key another transaction is inserting makes this one wait
# for its commit, then it is a conflict like any other.
_TAKE_KEYS = """
INSERT INTO ephq.dedup_keys AS k (stream, key, id, at)
SELECT %(stream)s, key, id, %(now)s
FROM unnest(%(keys)b::text[], string_to_array(%(ids)s, ',')) AS t(key, id) ORDER BY key
ON CONFLICT (stream, key) DO UPDATE SET id = EXCLUDED.id, at = EXCLUDED.at
WHERE k.at <= %(now)s - 1000000 * (SELECT dedup_window_ms FROM ephq.streams
                                   WHERE name = %(stream)s)
RETURNING key
"""
_FORGET_KEYS = """
DELETE FROM ephq.dedup_keys
WHERE stream = %(stream)s AND at <= %(now)s - 1000000 * (SELECT dedup_window_ms
                                                        FROM ephq.streams WHERE name = %(stream)s)
"""

# One statement per dequeue (ephq.claim, schema.py): pick the oldest visible rows (skipping
# those another consumer is claiming), dead-letter those whose attempts are spent, lease the
# rest. A row with an id is a lease; one without carries how many were dead-lettered, so that
# the caller looks again for what they left.
_CLAIM = "SELECT * FROM ephq.claim(%s, %s, %s, %s, %s, %s, %s)"


# The row of the delivery a receipt names (alone, and with the alias m).
_MATCH = (
    "stream = %(stream)s AND dead = %(dead)s AND id = %(id)s "
    "AND attempts = %(attempts)s AND token = %(token)s"
)
_MATCH_M = (
    "m.stream = %(stream)s AND m.dead = %(dead)s AND m.id = %(id)s "
    "AND m.attempts = %(attempts)s AND m.token = %(token)s"
)


# Leases that workers now gone had announced come back now, as if they had run out: the
# holders' rows whose connections have ended are deleted, and the messages they held made
# visible (a receipt is <deadline>.<id>.<attempts>.<token>, after 'dlq:' for a dead letter's).
_RELEASE_ORPHANS = r"""
WITH gone AS (
    DELETE FROM ephq.holders h
    WHERE h.stream = %(stream)s AND h.dead = %(dead)s
      AND h.backend_pid NOT IN (SELECT pid FROM pg_stat_activity)
    RETURNING h.leases
),
lease AS (
    SELECT split_part(r.key, '.', 2) AS id, split_part(r.key, '.', 3)::integer AS attempts,
           split_part(r.key, '.', 4) AS token
    FROM gone, jsonb_each(gone.leases) AS r
    -- Only what has a receipt's form: a damaged row must not make every dequeue fail.
    WHERE r.key ~ '^(dlq:)?[0-9a-f]{16}\.[0-9a-f]{24}\.[0-9]{1,9}\.[0-9a-f]{8}$'
)
UPDATE ephq.messages m SET visible_at = %(now)s
FROM lease
WHERE m.stream = %(stream)s AND m.dead = %(dead)s AND m.id = lease.id
  AND m.attempts = lease.attempts AND m.token = lease.token AND m.visible_at > %(now)s
"""
ORPHAN_LOOK_EVERY_NS = 1_000_000_000
KEY_SWEEP_EVERY_NS = 60 * NS


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PostgresBackend:
    def __init__(self, url: str, *, clock: Callable[[], int]) -> None:
        self.url = url
        self.clock = clock
        self.db = Connections(url)
        self.where = self.db.where
        self._ids = IdSource()
        self._known_streams: set[str] = set()
        self._added = 0
        self._analyze_at = ANALYZE_FIRST
        self._orphans_next: dict[tuple[str, bool], int] = {}
        self._keys_swept: dict[str, int] = {}

    # -- produce ---------------------------------------------------------------------------

    def _create_stream(self, stream: str) -> None:
        if stream in self._known_streams:
            return
        with self.db.cursor(f"create stream {stream!r}") as cur:
            cur.execute(
                "INSERT INTO ephq.streams (name) VALUES (%s) ON CONFLICT DO NOTHING", (stream,)
            )
        self._known_streams.add(stream)

    def enqueue(
        self,
        stream: str,
        items: list[str],
        delay_ns: int,
        progress: Progress = None,
        keys: list[str | None] | None = None,
        groups: list[str | None] | None = None,
    ) -> list[str]:
        self._create_stream(stream)
        if groups is not None and all(g is None for g in groups):
            groups = None
        if keys is not None:
            return self._enqueue_keyed(stream, items, delay_ns, keys, progress, groups)
        if groups is not None:
            now = self.clock()
            ids = [self._ids.next(now + i) for i in range(len(items))]
            with self.db.transaction(f"enqueue to stream {stream!r}") as cur:
                self._insert_grouped(cur, stream, ids, items, groups, now + delay_ns)
            if progress is not None:
                progress(len(items))
            self._grew(len(items))
            return ids
        now = self.clock()
        ids = [self._ids.next(now + i) for i in range(len(items))]
        visible = now + delay_ns
        # One statement: a batch is all or nothing, and the notification rides its commit.
        if len(items) == 1:  # arrays cost a single message 60 µs more than VALUES
            self.db.run(
                f"enqueue to stream {stream!r}",
                _ENQUEUE_ONE if delay_ns <= 0 else _ENQUEUE_ONE_QUIET,
                (stream, ids[0], visible, items[0]),
            )
        else:
            self.db.run(
                f"enqueue to stream {stream!r}",
                _ENQUEUE_MANY,
                _enqueue_many_params(stream, visible, ids, items, delay_ns <= 0),
            )
        if progress is not None:
            progress(len(items))
        self._grew(len(items))
        return ids

    def _enqueue_keyed(
        self,
        stream: str,
        items: list[str],
        delay_ns: int,
        keys: list[str | None],
        progress: Progress,
        groups: list[str | None] | None = None,
    ) -> list[str]:
        """One transaction: take the keys that are new (or past the window), look up the
        others' messages, insert the messages of the items that own a taken key or have none.
        Two producers with one key: the second's INSERT waits for the first's commit, then
        finds the key taken."""
        now = self.clock()
        owner: dict[str, int] = {}  # key -> the index of its first item
        for index, key in enumerate(keys):
            if key is not None:
                owner.setdefault(key, index)
        ids = [self._ids.next(now + i) for i in range(len(items))]
        by_key = sorted(owner)  # one order for every producer: no deadlock between batches
        with self.db.transaction(f"enqueue to stream {stream!r}") as cur:
            cur.execute(
                _TAKE_KEYS,
                {
                    "stream": stream,
                    "keys": by_key,  # in binary, the ids joined: see _enqueue_many_params
                    "ids": ",".join([ids[owner[k]] for k in by_key]),
                    "now": now,
                },
            )
            taken = {row[0] for row in cur.fetchall()}
            if len(taken) < len(by_key):
                cur.execute(
                    "SELECT key, id FROM ephq.dedup_keys "
                    "WHERE stream = %s AND key = ANY(%b::text[])",
                    (stream, [k for k in by_key if k not in taken]),
                )
                for key, message_id in cur.fetchall():
                    ids[owner[key]] = message_id
            fresh = [i for i, k in enumerate(keys) if k is None or (owner[k] == i and k in taken)]
            if fresh and groups is not None:
                self._insert_grouped(
                    cur,
                    stream,
                    [ids[i] for i in fresh],
                    [items[i] for i in fresh],
                    [groups[i] for i in fresh],
                    now + delay_ns,
                )
            elif fresh:
                cur.execute(
                    _ENQUEUE_MANY,
                    _enqueue_many_params(
                        stream,
                        now + delay_ns,
                        [ids[i] for i in fresh],
                        [items[i] for i in fresh],
                        delay_ns <= 0,
                    ),
                )
            self._forget_keys(cur, stream, now)
        if progress is not None:
            progress(len(items))
        self._grew(len(fresh))
        return [ids[i] if k is None else ids[owner[k]] for i, k in enumerate(keys)]

    @staticmethod
    def _insert_grouped(
        cur: Any,
        stream: str,
        ids: list[str],
        items: list[str],
        groups: list[str | None],
        visible: int,
    ) -> None:
        """Insert messages of which some have groups, in id order, in the caller's
        transaction, with one call of ephq.join_groups: each grouped one joins its group (its
        head, or waiting). Ids go joined by commas, groups and data as binary arrays (see
        _enqueue_many_params)."""
        cur.execute(
            "SELECT ephq.join_groups(%s, string_to_array(%s, ','), %b::text[], %b::text[], %s)",
            (stream, ",".join(ids), groups, items, visible),
        )

    def _forget_keys(self, cur: Any, stream: str, now: int) -> None:
        """Delete the stream's keys past its window, at most once a minute per process."""
        if now < self._keys_swept.get(stream, 0):
            return
        self._keys_swept[stream] = now + KEY_SWEEP_EVERY_NS
        cur.execute(_FORGET_KEYS, {"stream": stream, "now": now})

    def _grew(self, rows: int) -> None:
        """Count what this process added; ANALYZE when the count passes 1,000, then 10,000 and
        so on (see _analyze), so a table filled faster than autovacuum looks has statistics."""
        self._added += rows
        if self._added >= self._analyze_at:
            while self._analyze_at <= self._added:
                self._analyze_at *= 10
            self._analyze()

    def _analyze(self) -> None:
        """Give the planner statistics now rather than at autovacuum's next round (up to a
        minute): without them it takes a stream for a handful of rows and plans claims that
        look at every row of the stream (connection.py has the first line of defence)."""
        with self.db.cursor("analyze ephq.messages") as cur:
            cur.execute("ANALYZE ephq.messages")

    # -- consume ---------------------------------------------------------------------------

    def dequeue(
        self, stream: str, count: int, visibility_ns: int | None, dead: bool
    ) -> list[Message]:
        got: list[Message] = []
        doing = f"dequeue from stream {stream!r}"
        if self.clock() >= self._orphans_next.get((stream, dead), 0):
            self._release_orphans(stream, dead)
        while len(got) < count:
            now = self.clock()
            rows = self.db.run(
                doing,
                _CLAIM,
                (stream, dead, now, count - len(got), new_token(), visibility_ns, iso_utc(now)),
            ).fetchall()
            buried = sum(row[0] for row in rows)
            leased = sorted(row[1:] for row in rows if row[1] is not None)
            got += [self._delivery(stream, row, dead) for row in leased]
            if not buried:
                break  # what was not leased is not there (or another consumer has it)
        return got

    def _release_orphans(self, stream: str, dead: bool) -> None:
        """At most once a second per stream: give back the leases of workers that died."""
        now = self.clock()
        self._orphans_next[(stream, dead)] = now + ORPHAN_LOOK_EVERY_NS
        self.db.run(
            f"release the leases of workers of stream {stream!r} that are gone",
            _RELEASE_ORPHANS,
            {"stream": stream, "dead": dead, "now": now},
        )

    @staticmethod
    def _delivery(stream: str, row: Any, dead: bool) -> Message:
        """A message just leased, from its claim row, its fields given in order (this runs for
        every message dequeued)."""
        message_id, attempts, visible_at, token, data, meta, group = row
        if meta is None:  # the claim's NULL for the usual empty metadata
            meta = {}
        elif not dead:
            meta = live_metadata(meta, stream)
        lease = f"{visible_at:016x}.{message_id}.{attempts}.{token}"
        return Message(
            message_id,
            format_receipt(lease, dead),
            stream,
            json.loads(data),
            data,
            attempts,
            utc_from_ns(id_time_ns(message_id)),
            utc_from_ns(visible_at),
            meta,
            None,
            group,
        )

    def _message(self, stream: str, row: Any, dead: bool, state: str | None = None) -> Message:
        """A message looked at, not leased (peek, dead letters): no receipt; when it is due
        only when it is not ready."""
        message_id, attempts, visible_at, _token, data, meta, group = row
        if not dead:
            meta = live_metadata(meta, stream)
        return Message(
            id=message_id,
            receipt=None,
            stream=stream,
            data=json.loads(data),
            data_json=data,
            attempts=attempts,
            enqueued_at=utc_from_ns(id_time_ns(message_id)),
            visible_until=None if state in (None, "ready") else utc_from_ns(visible_at),
            metadata=meta,
            state=state,
            group=group,
        )

    def _settle(self, stream: str, receipt: str, sql: str, params: dict[str, Any]) -> Any:
        """Run sql on the delivery the receipt names; LeaseLost (or BadInput, for another
        stream's receipt) if that delivery has ended."""
        parsed = parse_receipt(receipt)
        lease = parsed.lease
        args = {
            "stream": stream,
            "dead": parsed.dead,
            "id": lease.id,
            "attempts": lease.attempts,
            "token": lease.token,
            "now": self.clock(),
            **params,
        }
        row = self.db.run(f"settle a delivery in stream {stream!r}", sql, args).fetchone()
        if row is not None:
            return row
        with self.db.cursor(f"settle a delivery in stream {stream!r}") as cur:
            cur.execute(
                "SELECT stream FROM ephq.messages WHERE id = %s AND token = %s AND stream <> %s",
                (lease.id, lease.token, stream),
            )
            other = cur.fetchone()
        if other is not None:
            raise BadInput(f"this receipt is for a message of stream {other[0]!r}, not {stream!r}")
        raise self._lost(parsed)

    @staticmethod
    def _lost(parsed: Receipt) -> LeaseLost:
        lease = parsed.lease
        return LeaseLost(
            f"the lease on message {lease.id} (delivery {lease.attempts}) has ended: it was "
            "acked, nacked, dead-lettered, or expired and was delivered again"
        )

    def ack(self, stream: str, receipt: str) -> None:
        self._settle(stream, receipt, f"DELETE FROM ephq.messages WHERE {_MATCH} RETURNING 1", {})

    def ack_many(self, stream: str, receipts: list[str]) -> list[str]:
        """Ack in one statement per kind (messages, dead letters); the receipts whose
        deliveries had ended."""
        parsed = [(r, parse_receipt(r)) for r in receipts]
        acked: set[tuple[bool, str, int, str | None]] = set()
        for dead in sorted({p.dead for _, p in parsed}):
            mine = [p.lease for _, p in parsed if p.dead == dead]
            rows = self.db.run(
                f"ack in stream {stream!r}",
                # Each receipt's row found by its whole key (an index lookup whatever the
                # statistics), then deleted by ctid (the one plan there is): as a join or by
                # `id = ANY(…)`, a planner without statistics may scan the whole stream.
                """DELETE FROM ephq.messages m WHERE m.ctid = ANY(ARRAY(
                       SELECT found.row
                       FROM unnest(string_to_array(%(ids)s, ','),
                                   string_to_array(%(attempts)s, ',')::integer[],
                                   string_to_array(%(tokens)s, ',')) AS r(id, attempts, token)
                       CROSS JOIN LATERAL (
                           SELECT ctid AS row FROM ephq.messages x
                           WHERE x.stream = %(stream)s AND x.dead = %(dead)s AND x.id = r.id
                             AND x.attempts = r.attempts AND x.token = r.token) found))
                   RETURNING m.id, m.attempts, m.token""",
                {
                    "stream": stream,
                    "dead": dead,
                    # As text joined by commas (parse_receipt made each part hex or
                    # digits): psycopg dumps a list at ~2 µs an element, half of a batch
                    # ack's time in Python.
                    "ids": ",".join([lease.id for lease in mine]),
                    "attempts": ",".join([str(lease.attempts) for lease in mine]),
                    "tokens": ",".join([lease.token or "" for lease in mine]),
                },
            ).fetchall()
            acked |= {(dead, row[0], row[1], row[2]) for row in rows}
        ended = []
        for receipt, p in parsed:
            delivery = (p.dead, p.lease.id, p.lease.attempts, p.lease.token)
            if delivery in acked:
                acked.discard(delivery)  # acked by its first mention: a repeat found it ended
            else:
                ended.append(receipt)
        return ended

    def nack(self, stream: str, receipt: str, delay_ns: int, reason: str | None) -> None:
        parsed = parse_receipt(receipt)
        if not parsed.dead:
            # Back after delay, or dead-lettered with reason if that was its last attempt.
            self._settle(
                stream,
                receipt,
                f"""
                UPDATE ephq.messages m SET
                    token = NULL,
                    dead = m.attempts >= c.max_attempts,
                    visible_at = CASE WHEN m.attempts >= c.max_attempts THEN %(now)s
                                 ELSE %(now)s + %(delay)s END,
                    meta = CASE WHEN m.attempts >= c.max_attempts
                        THEN m.meta || jsonb_build_object('dead', jsonb_build_object(
                            'stream', m.stream, 'error', %(reason)s::text,
                            'attempts', m.attempts, 'died_at', %(died_at)s::text))
                        ELSE m.meta END
                FROM (SELECT COALESCE((SELECT max_attempts FROM ephq.streams
                                       WHERE name = %(stream)s), 5) AS max_attempts) c
                WHERE {_MATCH_M}
                RETURNING 1
                """,
                {
                    "delay": delay_ns,
                    "reason": (reason or "nacked")[:MAX_ERROR_CHARS],
                    "died_at": iso_utc(self.clock()),
                },
            )
            return
        # A dead letter's handler failed: it waits for its retry, keeping why.
        record = reason is not None
        self._settle(
            stream,
            receipt,
            f"""
            UPDATE ephq.messages m SET token = NULL, visible_at = %(now)s + %(delay)s,
                meta = CASE WHEN %(record)s THEN jsonb_set(m.meta, '{{dead}}',
                    COALESCE(m.meta->'dead', '{{}}'::jsonb) || jsonb_build_object(
                        'dlq_error', %(reason)s::text, 'dlq_failed_at', %(at)s::text))
                    ELSE m.meta END
            WHERE {_MATCH_M}
            RETURNING 1
            """,
            {
                "delay": delay_ns,
                "record": record,
                "reason": (reason or "")[:MAX_ERROR_CHARS],
                "at": iso_utc(self.clock()),
            },
        )

    def release(self, stream: str, receipt: str) -> None:
        self._settle(
            stream,
            receipt,
            f"""UPDATE ephq.messages SET token = NULL, visible_at = %(now)s,
                    attempts = attempts - 1
                WHERE {_MATCH} RETURNING 1""",
            {},
        )

    def reject(self, stream: str, receipt: str, reason: str) -> None:
        if parse_receipt(receipt).dead:
            raise BadInput("a dead letter cannot be dead-lettered again: ack or nack it")
        self._settle(
            stream,
            receipt,
            f"""UPDATE ephq.messages m SET dead = true, token = NULL, visible_at = %(now)s,
                    meta = m.meta || jsonb_build_object('dead', jsonb_build_object(
                        'stream', m.stream, 'error', %(reason)s::text,
                        'attempts', m.attempts, 'died_at', %(died_at)s::text))
                WHERE {_MATCH_M} RETURNING 1""",
            {"reason": reason[:MAX_ERROR_CHARS], "died_at": iso_utc(self.clock())},
        )

    def extend(self, stream: str, receipt: str, visibility_ns: int) -> int:
        row = self._settle(
            stream,
            receipt,
            f"""UPDATE ephq.messages SET visible_at = %(now)s + %(visibility)s
                WHERE {_MATCH} RETURNING visible_at""",
            {"visibility": visibility_ns},
        )
        return int(row[0])

    def validate_receipt(self, receipt: str) -> None:
        parse_receipt(receipt)

    # -- look ------------------------------------------------------------------------------

    def peek(self, stream: str, count: int, dead: bool) -> list[Message]:
        now = self.clock()
        with self.db.cursor(f"peek at stream {stream!r}") as cur:
            # What the next dequeue would lease: not what it would dead-letter instead.
            cur.execute(
                f"""SELECT {_ROW} FROM ephq.messages m
                    WHERE stream = %(stream)s AND dead = %(dead)s AND visible_at <= %(now)s
                      AND (%(dead)s OR attempts < COALESCE((SELECT max_attempts
                           FROM ephq.streams WHERE name = %(stream)s), 5))
                    ORDER BY id LIMIT %(count)s""",
                {"stream": stream, "dead": dead, "now": now, "count": count},
            )
            rows = cur.fetchall()
        return [self._message(stream, row, dead) for row in rows]

    def _exists(self, cur: Any, stream: str) -> None:
        cur.execute("SELECT 1 FROM ephq.streams WHERE name = %s", (stream,))
        if cur.fetchone() is None:
            cur.execute("SELECT name FROM ephq.streams ORDER BY name LIMIT 10")
            known = ", ".join(r[0] for r in cur.fetchall()) or "none yet"
            raise NotFound(f"no stream {stream!r} in {self.where} (streams: {known})")

    def stats(self, stream: str) -> StreamStats:
        now = self.clock()
        with self.db.cursor(f"read the statistics of stream {stream!r}") as cur:
            self._exists(cur, stream)
            cur.execute(_BURY_SPENT, {"stream": stream, "now": now, "died_at": iso_utc(now)})
            cur.execute(
                """SELECT
                    count(*) FILTER (WHERE NOT dead AND visible_at <= %(now)s),
                    count(*) FILTER (WHERE NOT dead AND visible_at > %(now)s AND token IS NULL),
                    count(*) FILTER (WHERE NOT dead AND visible_at > %(now)s
                                     AND token IS NOT NULL),
                    count(*) FILTER (WHERE dead),
                    min(id) FILTER (WHERE NOT dead AND visible_at <= %(now)s)
                FROM ephq.messages WHERE stream = %(stream)s""",
                {"stream": stream, "now": now},
            )
            ready, delayed, inflight, dead, oldest = cur.fetchone() or (0, 0, 0, 0, None)
            # A group's waiting messages count as ready.
            cur.execute("SELECT count(*), min(id) FROM ephq.waiting WHERE stream = %s", (stream,))
            waiting, first_waiting = cur.fetchone() or (0, None)
            ready += waiting
            if first_waiting is not None and (oldest is None or first_waiting < oldest):
                oldest = first_waiting
        age = None if oldest is None else max(0.0, (now - id_time_ns(oldest)) / NS)
        return StreamStats(stream, ready, delayed, inflight, dead, age)

    def streams(self) -> list[str]:
        with self.db.cursor("list streams") as cur:
            cur.execute("SELECT name FROM ephq.streams ORDER BY name")
            return [row[0] for row in cur.fetchall()]

    def purge(self, stream: str) -> int:
        with self.db.transaction(f"purge stream {stream!r}") as cur:
            # The groups first, so that deleting their heads promotes nothing.
            cur.execute("DELETE FROM ephq.waiting WHERE stream = %s", (stream,))
            waiting = int(cur.rowcount)
            cur.execute("DELETE FROM ephq.groups WHERE stream = %s", (stream,))
            cur.execute("DELETE FROM ephq.messages WHERE stream = %s AND NOT dead", (stream,))
            return waiting + int(cur.rowcount)

    def _config(self, cur: Any, stream: str) -> StreamConfig:
        cur.execute(
            "SELECT max_attempts, visibility_ms, max_size, dedup_window_ms, dead_letter_stream "
            "FROM ephq.streams WHERE name = %s",
            (stream,),
        )
        row = cur.fetchone()
        if row is None:
            return DEFAULTS
        return StreamConfig(
            int(row[0]), int(row[1]) / 1000, int(row[2]), int(row[3]) / 1000, row[4]
        )

    def config(self, stream: str) -> StreamConfig:
        with self.db.cursor(f"read the settings of stream {stream!r}") as cur:
            return self._config(cur, stream)

    def configure(self, stream: str, changes: dict[str, Any]) -> StreamConfig:
        def ms(seconds: float | None) -> int | None:
            return None if seconds is None else max(1, round(seconds * 1000))

        with self.db.transaction(f"configure stream {stream!r}") as cur:
            cur.execute(
                """INSERT INTO ephq.streams AS s (name) VALUES (%(stream)s)
                   ON CONFLICT (name) DO NOTHING""",
                {"stream": stream},
            )
            cur.execute(
                """UPDATE ephq.streams AS s SET
                       max_attempts = COALESCE(%(attempts)s, s.max_attempts),
                       visibility_ms = COALESCE(%(vis)s, s.visibility_ms),
                       max_size = COALESCE(%(size)s, s.max_size),
                       dedup_window_ms = COALESCE(%(window)s, s.dedup_window_ms),
                       dead_letter_stream = CASE WHEN %(forward)s THEN %(target)s
                                            ELSE s.dead_letter_stream END
                   WHERE name = %(stream)s""",
                {
                    "stream": stream,
                    "attempts": changes.get("max_attempts"),
                    "vis": ms(changes.get("visibility")),
                    "size": changes.get("max_size"),
                    "window": ms(changes.get("dedup_window")),
                    "forward": "dead_letter_stream" in changes,
                    "target": changes.get("dead_letter_stream"),
                },
            )
            self._known_streams.add(stream)
            return self._config(cur, stream)

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, stream: str, count: int) -> list[Message]:
        now = self.clock()
        with self.db.cursor(f"list the dead letters of stream {stream!r}") as cur:
            self._exists(cur, stream)
            cur.execute(
                f"""SELECT {_ROW} FROM ephq.messages m WHERE stream = %s AND dead
                    ORDER BY id LIMIT %s""",
                (stream, count),
            )
            rows = cur.fetchall()
        return [self._dead_message(stream, row, now) for row in rows]

    def _dead_message(self, stream: str, row: Any, now: int) -> Message:
        visible_at, token = row[2], row[3]
        state = "ready" if visible_at <= now else "delayed" if token is None else "inflight"
        return self._message(stream, row, True, state=state)

    def dead_letter(self, stream: str, message_id: str) -> Message:
        _require_id(message_id)
        with self.db.cursor(f"read a dead letter of stream {stream!r}") as cur:
            cur.execute(
                f"SELECT {_ROW} FROM ephq.messages m WHERE stream = %s AND dead AND id = %s",
                (stream, message_id),
            )
            row = cur.fetchone()
        if row is None:
            raise NotFound(
                f"no dead letter with id {message_id} in the dead letters of stream {stream!r}"
            )
        return self._dead_message(stream, row, self.clock())

    def _dead_ids(self, cur: Any, stream: str, ids: list[str] | None) -> list[str]:
        """The dead letters' ids (all, or these, each checked to be there), locked."""
        if ids is None:
            cur.execute(
                "SELECT id FROM ephq.messages WHERE stream = %s AND dead ORDER BY id FOR UPDATE",
                (stream,),
            )
            return [row[0] for row in cur.fetchall()]
        for message_id in ids:
            _require_id(message_id)
        cur.execute(
            "SELECT id FROM ephq.messages WHERE stream = %s AND dead AND id = ANY(%s) FOR UPDATE",
            (stream, ids),
        )
        found = {row[0] for row in cur.fetchall()}
        for message_id in ids:
            if message_id not in found:
                raise NotFound(
                    f"no dead letter with id {message_id} in the dead letters of stream {stream!r}"
                )
        return list(dict.fromkeys(ids))

    def redrive(self, stream: str, ids: list[str] | None, progress: Progress = None) -> list[str]:
        with self.db.transaction(f"redrive dead letters of stream {stream!r}") as cur:
            others: list[str] | None = None
            if ids is None:
                chosen = self._dead_ids(cur, stream, None)
            else:  # ids not among the stream's dead letters: its own messages
                for message_id in ids:
                    _require_id(message_id)
                cur.execute(
                    "SELECT id FROM ephq.messages WHERE stream = %s AND dead AND id = ANY(%s) "
                    "FOR UPDATE",
                    (stream, ids),
                )
                dead = {row[0] for row in cur.fetchall()}
                chosen = [i for i in dict.fromkeys(ids) if i in dead]
                others = [i for i in dict.fromkeys(ids) if i not in dead]
            cur.execute(
                """SELECT id, grp FROM ephq.messages
                   WHERE stream = %s AND dead AND id = ANY(%s) AND grp IS NOT NULL
                   ORDER BY id""",
                (stream, chosen),
            )
            for message_id, group in cur.fetchall():  # back into their groups, in order
                self._rejoin(cur, stream, message_id, group)
            cur.execute(
                # A dead letter that first died in another stream stays one (a message of a
                # dead-letter stream): its metadata.dead is what it is about.
                """UPDATE ephq.messages SET dead = false, attempts = 0, token = NULL,
                       visible_at = %(now)s,
                       meta = CASE WHEN COALESCE(meta->'dead'->>'stream', %(stream)s)
                                        <> %(stream)s THEN meta
                              ELSE meta - 'dead' END
                   WHERE stream = %(stream)s AND dead AND id = ANY(%(ids)s)""",
                {"now": self.clock(), "stream": stream, "ids": chosen},
            )
            if chosen:
                cur.execute("SELECT ephq.ring(%s)", (stream,))
            # A dead letter of this stream that first died in another one goes there too.
            chosen = list(dict.fromkeys(chosen + self._send_home(cur, stream, others)))
        if progress is not None:
            progress(len(chosen))
        return chosen

    def _rejoin(self, cur: Any, stream: str, message_id: str, group: str) -> None:
        """A grouped dead letter redriven: its group's head if it has none, else waiting."""
        cur.execute(
            "INSERT INTO ephq.groups (stream, grp, head) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (stream, group, message_id),
        )
        if cur.fetchone() is not None:
            return  # the redrive's UPDATE, next, makes it its group's head
        cur.execute(
            """WITH gone AS (
                   DELETE FROM ephq.messages
                   WHERE stream = %(stream)s AND dead AND id = %(id)s RETURNING data, meta)
               INSERT INTO ephq.waiting (stream, grp, id, attempts, visible_at, data, meta)
               SELECT %(stream)s, %(group)s, %(id)s, 0, %(now)s, data, meta - 'dead'
               FROM gone""",
            {"stream": stream, "group": group, "id": message_id, "now": self.clock()},
        )

    def _send_home(self, cur: Any, stream: str, ids: list[str] | None) -> list[str]:
        """In a dead-letter stream: its messages that died in another stream (all, or these
        ids), back there with fresh attempts, in their places by id."""
        if ids == []:
            return []
        cur.execute(
            # All: only rows that died elsewhere are locked, never the stream's own messages,
            # which consumers would skip meanwhile.
            """SELECT id, meta->'dead'->>'stream' FROM ephq.messages
                WHERE stream = %(stream)s AND NOT dead
                  AND (CASE WHEN %(all)s THEN meta->'dead'->>'stream' <> %(stream)s
                       ELSE id = ANY(%(ids)s) END)
                ORDER BY id FOR UPDATE""",
            {"stream": stream, "all": ids is None, "ids": ids or []},
        )
        origins = dict(cur.fetchall())
        for message_id in ids or []:
            if message_id not in origins:
                raise NotFound(f"no message with id {message_id} in stream {stream!r}")
        homes = {}
        for message_id, origin in origins.items():
            if origin is not None and origin != stream and _is_stream_name(origin):
                homes[message_id] = origin
            elif ids is not None:
                raise BadInput(
                    f"message {message_id} of stream {stream!r} is not a dead letter "
                    "of another stream: nothing to redrive it to"
                )
        if not homes:
            return []
        cur.execute(
            "INSERT INTO ephq.streams (name) SELECT DISTINCT unnest(%s::text[]) "
            "ON CONFLICT DO NOTHING",
            (list(set(homes.values())),),
        )
        cur.execute(
            """UPDATE ephq.messages m SET stream = m.meta->'dead'->>'stream', attempts = 0,
                   token = NULL, visible_at = %s, meta = m.meta - 'dead'
               WHERE m.stream = %s AND NOT m.dead AND m.id = ANY(%s)""",
            (self.clock(), stream, list(homes)),
        )
        for home in sorted(set(homes.values())):
            cur.execute("SELECT ephq.ring(%s)", (home,))
        return list(homes)

    def purge_dead_letters(self, stream: str, ids: list[str] | None) -> list[str]:
        with self.db.transaction(f"purge dead letters of stream {stream!r}") as cur:
            chosen = self._dead_ids(cur, stream, ids)
            cur.execute(
                "DELETE FROM ephq.messages WHERE stream = %s AND dead AND id = ANY(%s)",
                (stream, chosen),
            )
        return chosen

    # -- waiting ---------------------------------------------------------------------------

    def waiter(self, stream: str, dead: bool) -> Waiter:
        from .waiting import Listener

        return Listener(self.db, stream)

    def seconds_until_due(self, stream: str, dead: bool) -> float:
        now = self.clock()
        with self.db.cursor(f"read stream {stream!r}") as cur:
            cur.execute(
                """SELECT min(visible_at) FROM ephq.messages
                   WHERE stream = %s AND dead = %s AND visible_at > %s""",
                (stream, dead, now),
            )
            row = cur.fetchone()
        due = None if row is None else row[0]
        return 1.0 if due is None else min(1.0, max(0.0, (due - now) / NS))

    def next_delayed_ns(self, stream: str, dead: bool) -> int | None:
        with self.db.cursor(f"read stream {stream!r}") as cur:
            cur.execute(
                """SELECT min(visible_at) FROM ephq.messages
                   WHERE stream = %s AND dead = %s AND visible_at > %s AND token IS NULL""",
                (stream, dead, self.clock()),
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- leases and their holders ----------------------------------------------------------

    def leases(self, stream: str) -> list[Lease]:
        now = self.clock()
        with self.db.cursor(f"list the leases of stream {stream!r}") as cur:
            self._exists(cur, stream)
            cur.execute(
                """SELECT h.host, h.pid, h.worker, h.started_at, h.leases FROM ephq.holders h
                   WHERE h.stream = %s
                     AND h.backend_pid IN (SELECT pid FROM pg_stat_activity)""",
                (stream,),
            )
            held: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
            for host, pid, worker, started_at, leases in cur.fetchall():
                who = {"host": host, "pid": pid, "worker": worker, "started_at": started_at}
                for receipt, when in leases.items():
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

    # -- moving a backlog ------------------------------------------------------------------

    def export(self, stream: str) -> Iterator[Exported]:
        now = self.clock()
        with self.db.cursor(f"export stream {stream!r}") as cur:
            self._exists(cur, stream)
        conn = self.db.get()
        # A server-side cursor in one transaction: a consistent snapshot, read in slices.
        with (
            self.db.translated(f"export stream {stream!r}"),
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

    def import_messages(self, stream: str, records: list[Exported]) -> int:
        now = self.clock()
        # (Ids are checked: hex. They go joined by commas, the other arrays in binary: see
        # _enqueue_many_params.)
        ids = ",".join([r.id for r in records])
        self._create_stream(stream)
        with self.db.transaction(f"import into stream {stream!r}") as cur:
            cur.execute(
                "SELECT id FROM ephq.messages WHERE stream = %s "
                "AND id = ANY(string_to_array(%s, ',')) LIMIT 1",
                (stream, ids),
            )
            clash = cur.fetchone()
            if clash is None:
                cur.execute(
                    "SELECT id FROM ephq.waiting WHERE stream = %s "
                    "AND id = ANY(string_to_array(%s, ',')) LIMIT 1",
                    (stream, ids),
                )
                clash = cur.fetchone()
            if clash is not None:
                raise BadInput(f"message {clash[0]} is already in stream {stream!r}")
            joining = [
                r for r in records if r.state != "dead" and isinstance(r.metadata.get("group"), str)
            ]
            joined = {r.id for r in joining}
            records = [r for r in records if r.id not in joined]
            for r in sorted(joining, key=lambda r: r.id):  # into their groups, in order
                visible = r.visible_at_ns if r.state == "delayed" and r.visible_at_ns else now
                meta = {k: v for k, v in r.metadata.items() if k != "group"}
                cur.execute(
                    "SELECT ephq.join_group(%s, %s, %s, %s, %s, %s, %s::jsonb)",
                    (
                        stream,
                        r.metadata["group"],
                        r.id,
                        r.attempts,
                        visible,
                        r.data_json,
                        json.dumps(meta),
                    ),
                )
            cur.execute(
                """INSERT INTO ephq.messages
                       (stream, dead, id, attempts, visible_at, data, meta, grp)
                   SELECT %s, d, i, a, v, t, m::jsonb - 'group', m::jsonb->>'group'
                   FROM unnest(%b::boolean[], string_to_array(%s, ','), %b::integer[],
                               %b::bigint[], %b::text[], %b::text[]) AS x(d, i, a, v, t, m)""",
                (
                    stream,
                    [r.state == "dead" for r in records],
                    ids,
                    [r.attempts for r in records],
                    [
                        r.visible_at_ns
                        if r.state == "delayed" and r.visible_at_ns is not None
                        else now
                        for r in records
                    ],
                    [r.data_json for r in records],
                    [json.dumps(r.metadata) for r in records],
                ),
            )
            cur.execute("SELECT ephq.ring(%s)", (stream,))
        self._grew(len(records) + len(joining))
        return len(records) + len(joining)

    def hold(self, stream: str, dead: bool, worker: str) -> Holder:
        return DatabaseHolder(self.db, stream, dead, worker, self.clock())

    # -- upkeep ----------------------------------------------------------------------------

    def check(self, stream: str | None, repair: bool) -> list[CheckProblem]:
        """The schema is there, at this ephq's version; stale holders are reported (and
        removed on repair). Rows are the database's to keep consistent."""
        problems: list[CheckProblem] = []
        with self.db.cursor("check the database") as cur:
            cur.execute("SELECT version FROM ephq.schema_version")
            row = cur.fetchone()
            if row is None or row[0] != schema.VERSION:
                problems.append(
                    CheckProblem(
                        stream or "",
                        "schema",
                        self.where,
                        f"schema version {row and row[0]}, expected {schema.VERSION}",
                    )
                )
            cur.execute(
                """SELECT id, stream FROM ephq.holders
                   WHERE backend_pid NOT IN (SELECT pid FROM pg_stat_activity)
                     AND (%(stream)s::text IS NULL OR stream = %(stream)s)""",
                {"stream": stream},
            )
            stale = cur.fetchall()
            if repair and stale:
                cur.execute("DELETE FROM ephq.holders WHERE id = ANY(%s)", ([r[0] for r in stale],))
            for holder_id, holder_stream in stale:
                problems.append(
                    CheckProblem(
                        holder_stream,
                        "stale-holder",
                        f"ephq.holders id {holder_id}",
                        "left by a worker that is gone",
                        repaired=repair,
                    )
                )
        return problems

    def close(self) -> None:
        self.db.close()


class DatabaseHolder:
    """A worker's row in ephq.holders, written on a connection of its own: the row is believed
    while that connection's backend lives, so a killed worker's row says nothing."""

    def __init__(self, db: Connections, stream: str, dead: bool, worker: str, now: int) -> None:
        self._conn = db.connect()
        self._db = db
        with db.translated("register a worker"), self._conn.cursor() as cur:
            # What workers that are gone left (their connections ended): their leases come
            # back now, and their rows go, as the file backend's next worker does.
            cur.execute(_RELEASE_ORPHANS, {"stream": stream, "dead": dead, "now": now})
            cur.execute(
                """INSERT INTO ephq.holders (stream, dead, backend_pid, host, pid, worker,
                       started_at)
                   VALUES (%s, %s, pg_backend_pid(), %s, %s, %s, %s) RETURNING id""",
                (stream, dead, socket.gethostname(), os.getpid(), worker, time.time_ns()),
            )
            row = cur.fetchone()
        self._id = None if row is None else row[0]

    def publish(self, leases: dict[str, int]) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.execute(
                    "UPDATE ephq.holders SET leases = %s WHERE id = %s",
                    (json.dumps(leases), self._id),
                )
        except Exception:
            pass

    def close(self) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.execute("DELETE FROM ephq.holders WHERE id = %s", (self._id,))
        except Exception:
            pass
        self._conn.close()


def _is_stream_name(name: str) -> bool:
    try:
        check_stream_name(name)
    except BadInput:
        return False
    return True


def _require_id(message_id: str) -> None:
    if not isinstance(message_id, str) or not is_id(message_id):
        raise BadInput(f"{message_id!r} is not a message id (24 hex digits, as enqueue prints)")
