"""Rows that are not messages (rows.py), moved whole out of every reader's way into
ephq.quarantine, and found there by `check` (schema.py, version 4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from ..ids import is_stream_name
from .connection import Connections
from .rows import NotAMessage, vet

_COLUMNS = "stream, dead, id, attempts, visible_at, token, data, meta, grp"

# The move: one statement, so a row is in exactly one of the two tables.
_LEASED = f"""
WITH gone AS (
    DELETE FROM ephq.messages
    WHERE stream = %(stream)s AND dead = %(dead)s AND id = %(id)s AND token = %(token)s
    RETURNING {_COLUMNS})
INSERT INTO ephq.quarantine (from_table, {_COLUMNS}, why, set_aside_at)
SELECT 'messages', {_COLUMNS}, %(why)s, %(now)s FROM gone
"""
_FOUND = {
    "messages": f"""
        WITH gone AS (
            DELETE FROM ephq.messages
            WHERE stream = %(stream)s AND dead = %(dead)s AND id = %(id)s
            RETURNING {_COLUMNS})
        INSERT INTO ephq.quarantine (from_table, {_COLUMNS}, why, set_aside_at)
        SELECT 'messages', {_COLUMNS}, %(why)s, %(now)s FROM gone""",
    "waiting": f"""
        WITH gone AS (
            DELETE FROM ephq.waiting
            WHERE stream = %(stream)s AND grp = %(group)s AND id = %(id)s
            RETURNING stream, false AS dead, id, attempts, visible_at, NULL::text AS token,
                      data, meta, grp)
        INSERT INTO ephq.quarantine (from_table, {_COLUMNS}, why, set_aside_at)
        SELECT 'waiting', {_COLUMNS}, %(why)s, %(now)s FROM gone""",
}


class Found(NamedTuple):
    """A row that is not a message, where it is and why."""

    table: str  # messages or waiting
    stream: str
    dead: bool
    id: str
    group: str | None
    why: str

    @property
    def where(self) -> str:
        return f"ephq.{self.table} row {self.id!r}" + (" (a dead letter)" if self.dead else "")


def set_aside_leased(
    db: Connections, stream: str, dead: bool, row: Any, why: str, now: int
) -> None:
    """Set aside a row a claim just leased (row as the claim returns it)."""
    message_id, _attempts, _visible_at, token = row[:4]
    db.run(
        f"set aside a row of stream {stream!r} that is not a message",
        _LEASED,
        {"stream": stream, "dead": dead, "id": message_id, "token": token, "why": why, "now": now},
    )


def set_aside(db: Connections, found: Found, now: int) -> None:
    """Set aside a row check found."""
    db.run(
        f"set aside a row of stream {found.stream!r} that is not a message",
        _FOUND[found.table],
        {
            "stream": found.stream,
            "dead": found.dead,
            "id": found.id,
            "group": found.group,
            "why": found.why,
            "now": now,
        },
    )


def not_messages(db: Connections, stream: str | None) -> Iterator[Found]:
    """Every row of the stream (or of all) that is not a message, read in one snapshot."""
    conn = db.get()
    with (
        db.translated("check the messages"),
        conn.transaction(),
        conn.cursor(name="ephq_check") as cur,
    ):
        cur.itersize = 1000
        cur.execute(
            """SELECT 'messages', stream, dead, id, data, meta, grp FROM ephq.messages
               WHERE %(stream)s::text IS NULL OR stream = %(stream)s
               UNION ALL
               SELECT 'waiting', stream, false, id, data, meta, grp FROM ephq.waiting
               WHERE %(stream)s::text IS NULL OR stream = %(stream)s""",
            {"stream": stream},
        )
        for table, row_stream, dead, message_id, data, meta, group in cur:
            try:
                vet(message_id, data, meta)
                if stream is None and not is_stream_name(row_stream):
                    # No command can name its stream: nobody would ever receive it.
                    raise NotAMessage(f"its stream {row_stream!r} is not a stream name")
            except NotAMessage as exc:
                yield Found(table, row_stream, dead, message_id, group, str(exc))


def kept(db: Connections, stream: str | None) -> list[tuple[int, str, str, str]]:
    """What the quarantine holds (of the stream, or all): number, stream, id, why."""
    with db.cursor("read the quarantine") as cur:
        cur.execute(
            """SELECT n, stream, id, why FROM ephq.quarantine
               WHERE %(stream)s::text IS NULL OR stream = %(stream)s ORDER BY n""",
            {"stream": stream},
        )
        return [(int(n), s, i, w) for n, s, i, w in cur.fetchall()]
