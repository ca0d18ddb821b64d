"""The PostgreSQL backend: every operation of the Backend protocol as one SQL statement.

Time is the caller's clock (nanoseconds, as the file backend's), passed into each statement:
hosts sharing a database must keep their clocks in step (NTP), as processes sharing a file
store do. A lease is a row's state (token, visible_at), never an open transaction: nothing is
held while a handler runs. Stream names and ids are always parameters, never SQL text.

This module produces, leases and settles; what only reads is browse.py, dead letters dead.py,
workers' rows holders.py, rows made messages rows.py (and those that are not set aside,
quarantine.py), `check` check.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..backend import Holder, Progress, Waiter
from ..errors import BadInput, LeaseLost
from ..ids import IdSource, Receipt, new_token, parse_receipt
from ..message import CheckProblem, Exported, Lease, Message, StreamConfig, StreamStats
from . import browse, quarantine
from . import dead as dead_letters
from .check import check, settings_in_bounds
from .connection import Connections
from .holders import ORPHAN_LOOK_EVERY_NS, RELEASE_ORPHANS, DatabaseHolder, orphans_of
from .rows import NS, NotAMessage, delivery, iso_utc

if TYPE_CHECKING:
    from .waiting import Listeners

MAX_ERROR_CHARS = 4096
# This process ANALYZEs the table after adding this many rows, and ten times as many, ...
ANALYZE_FIRST = 1000
DEFAULTS = StreamConfig()

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


KEY_SWEEP_EVERY_NS = 60 * NS
# What a process notes per stream (the streams it made, when to look for orphans and sweep
# keys next) is forgotten all at once past this many streams: a long-lived process working
# through streams one after the other (one per tenant) must not grow without end, and each
# note forgotten costs at most one statement more, once.
MOST_STREAMS = 4096
K = TypeVar("K")


class PostgresBackend:
    def __init__(self, url: str, *, clock: Callable[[], int]) -> None:
        self.url = url
        self.clock = clock
        self.db = Connections(url)
        self.where = self.db.where
        self._listeners: Listeners | None = None  # made by the first wait
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
        _make_room(self._known_streams, stream)
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
        _make_room(self._keys_swept, stream)
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
            set_aside = 0
            for row in leased:
                try:
                    got.append(delivery(stream, row, dead))
                except NotAMessage as exc:  # someone else's row: out of every reader's way
                    quarantine.set_aside_leased(self.db, stream, dead, row, str(exc), now)
                    set_aside += 1
            if not buried and not set_aside:
                break  # what was not leased is not there (or another consumer has it)
        return got

    def _release_orphans(self, stream: str, dead: bool) -> None:
        """At most once a second per stream: give back the leases of workers that died."""
        now = self.clock()
        _make_room(self._orphans_next, (stream, dead))
        self._orphans_next[(stream, dead)] = now + ORPHAN_LOOK_EVERY_NS
        self.db.run(
            f"release the leases of workers of stream {stream!r} that are gone",
            RELEASE_ORPHANS,
            orphans_of(stream, dead, now),
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
        return browse.peek(self.db, stream, count, dead, self.clock())

    def stats(self, stream: str) -> StreamStats:
        return browse.stats(self.db, stream, self.clock())

    def streams(self) -> list[str]:
        return browse.streams(self.db)

    def purge(self, stream: str) -> int:
        with self.db.transaction(f"purge stream {stream!r}") as cur:
            browse.require_stream(cur, stream, self.where)  # a typo must not say it emptied it
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
        config = StreamConfig(
            int(row[0]), int(row[1]) / 1000, int(row[2]), int(row[3]) / 1000, row[4]
        )
        # A row set out of bounds by hand before schema 4 forbade it: the defaults, as for a
        # settings file that does not parse; check reports it.
        return config if settings_in_bounds(config) else DEFAULTS

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
            _make_room(self._known_streams, stream)
            self._known_streams.add(stream)
            return self._config(cur, stream)

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, stream: str, count: int) -> list[Message]:
        return dead_letters.listing(self.db, stream, count, self.clock())

    def dead_letter(self, stream: str, message_id: str) -> Message:
        return dead_letters.get(self.db, stream, message_id, self.clock())

    def redrive(self, stream: str, ids: list[str] | None, progress: Progress = None) -> list[str]:
        moved = dead_letters.redrive(self.db, stream, ids, self.clock)
        if progress is not None:
            progress(len(moved))
        return moved

    def purge_dead_letters(self, stream: str, ids: list[str] | None) -> list[str]:
        return dead_letters.purge(self.db, stream, ids)

    # -- waiting ---------------------------------------------------------------------------

    def waiter(self, stream: str, dead: bool) -> Waiter:
        if self._listeners is None:
            from .waiting import Listeners  # psycopg.sql: only a waiting consumer needs it

            self._listeners = Listeners(self.db)
        return self._listeners.take(stream)

    def seconds_until_due(self, stream: str, dead: bool) -> float:
        return browse.seconds_until_due(self.db, stream, dead, self.clock())

    def next_delayed_ns(self, stream: str, dead: bool) -> int | None:
        return browse.next_delayed_ns(self.db, stream, dead, self.clock())

    # -- leases and their holders ----------------------------------------------------------

    def leases(self, stream: str) -> list[Lease]:
        return browse.leases(self.db, stream, self.clock())

    def hold(self, stream: str, dead: bool, worker: str) -> Holder:
        return DatabaseHolder(self.db, stream, dead, worker, self.clock())

    # -- moving a backlog ------------------------------------------------------------------

    def export(self, stream: str) -> Iterator[Exported]:
        yield from browse.export(self.db, stream, self.clock())

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

    # -- upkeep ----------------------------------------------------------------------------

    def check(self, stream: str | None, repair: bool) -> list[CheckProblem]:
        return check(self.db, stream, repair, self.clock)

    def close(self) -> None:
        if self._listeners is not None:
            self._listeners.close()
        self.db.close()


def _make_room(notes: set[K] | dict[K, int], key: K) -> None:
    """Before key is noted in a per-stream note: past MOST_STREAMS, forget every other (what
    was due is then due at once, and a stream made is made again, harmlessly)."""
    if len(notes) >= MOST_STREAMS and key not in notes:
        notes.clear()
