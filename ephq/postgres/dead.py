"""A stream's dead letters: listed, read, redriven (back into their stream, or into the stream
they first died in) and purged, each change in one transaction: all of it or none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BadInput, NotFound
from ..ids import is_stream_name
from ..message import Message
from .browse import readable, require_stream
from .connection import Connections
from .rows import ROW, NotAMessage, dead_letter, require_id


def listing(db: Connections, stream: str, count: int, now: int) -> list[Message]:
    with db.cursor(f"list the dead letters of stream {stream!r}") as cur:
        require_stream(cur, stream, db.where)
        cur.execute(
            f"""SELECT {ROW} FROM ephq.messages m WHERE stream = %s AND dead
                ORDER BY id LIMIT %s""",
            (stream, count),
        )
        rows = cur.fetchall()
    return readable(rows, lambda row: dead_letter(stream, row, now))


def get(db: Connections, stream: str, message_id: str, now: int) -> Message:
    require_id(message_id)
    with db.cursor(f"read a dead letter of stream {stream!r}") as cur:
        cur.execute(
            f"SELECT {ROW} FROM ephq.messages m WHERE stream = %s AND dead AND id = %s",
            (stream, message_id),
        )
        row = cur.fetchone()
    if row is None:
        raise _missing(stream, message_id)
    try:
        return dead_letter(stream, row, now)
    except NotAMessage as exc:
        raise NotFound(
            f"the dead letter {message_id} of stream {stream!r} is not a message ({exc}): "
            "`ephq check --repair` sets it aside"
        ) from None


def redrive(
    db: Connections, stream: str, ids: list[str] | None, clock: Callable[[], int]
) -> list[str]:
    """The dead letters (all, or these ids) back into the stream with fresh attempts; in a
    dead-letter stream, these ids may also name its messages that died in another stream,
    which go back there. The ids moved."""
    with db.transaction(f"redrive dead letters of stream {stream!r}") as cur:
        others: list[str] | None = None
        if ids is None:
            chosen = _locked_ids(cur, stream, None)
        else:  # ids not among the stream's dead letters: its own messages
            for message_id in ids:
                require_id(message_id)
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
            _rejoin(cur, stream, message_id, group, clock())
        cur.execute(
            # A dead letter that first died in another stream stays one (a message of a
            # dead-letter stream): its metadata.dead is what it is about.
            """UPDATE ephq.messages SET dead = false, attempts = 0, token = NULL,
                   visible_at = %(now)s,
                   meta = CASE WHEN COALESCE(meta->'dead'->>'stream', %(stream)s)
                                    <> %(stream)s THEN meta
                          ELSE meta - 'dead' END
               WHERE stream = %(stream)s AND dead AND id = ANY(%(ids)s)""",
            {"now": clock(), "stream": stream, "ids": chosen},
        )
        if chosen:
            cur.execute("SELECT ephq.ring(%s)", (stream,))
        # A dead letter of this stream that first died in another one goes there too.
        return list(dict.fromkeys(chosen + _send_home(cur, stream, others, clock())))


def purge(db: Connections, stream: str, ids: list[str] | None) -> list[str]:
    """Delete the dead letters (all, or these ids, each of which must be one); their ids."""
    with db.transaction(f"purge dead letters of stream {stream!r}") as cur:
        require_stream(cur, stream, db.where)  # (a typo must not pass for dead letters gone)
        chosen = _locked_ids(cur, stream, ids)
        cur.execute(
            "DELETE FROM ephq.messages WHERE stream = %s AND dead AND id = ANY(%s)",
            (stream, chosen),
        )
    return chosen


def _locked_ids(cur: Any, stream: str, ids: list[str] | None) -> list[str]:
    """The dead letters' ids (all, or these, each checked to be there), locked."""
    if ids is None:
        cur.execute(
            "SELECT id FROM ephq.messages WHERE stream = %s AND dead ORDER BY id FOR UPDATE",
            (stream,),
        )
        return [row[0] for row in cur.fetchall()]
    for message_id in ids:
        require_id(message_id)
    cur.execute(
        "SELECT id FROM ephq.messages WHERE stream = %s AND dead AND id = ANY(%s) FOR UPDATE",
        (stream, ids),
    )
    found = {row[0] for row in cur.fetchall()}
    for message_id in ids:
        if message_id not in found:
            raise _missing(stream, message_id)
    return list(dict.fromkeys(ids))


def _missing(stream: str, message_id: str) -> NotFound:
    return NotFound(f"no dead letter with id {message_id} in the dead letters of stream {stream!r}")


def _rejoin(cur: Any, stream: str, message_id: str, group: str, now: int) -> None:
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
        {"stream": stream, "group": group, "id": message_id, "now": now},
    )


def _send_home(cur: Any, stream: str, ids: list[str] | None, now: int) -> list[str]:
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
        if origin is not None and origin != stream and is_stream_name(origin):
            homes[message_id] = origin
        elif ids is not None:
            raise BadInput(
                f"message {message_id} of stream {stream!r} is not a dead letter "
                "of another stream: nothing to redrive it to"
            )
    if not homes:
        return []
    cur.execute(
        "INSERT INTO ephq.streams (name) SELECT DISTINCT unnest(%s::text[]) ON CONFLICT DO NOTHING",
        (list(set(homes.values())),),
    )
    cur.execute(
        """UPDATE ephq.messages m SET stream = m.meta->'dead'->>'stream', attempts = 0,
               token = NULL, visible_at = %s, meta = m.meta - 'dead'
           WHERE m.stream = %s AND NOT m.dead AND m.id = ANY(%s)""",
        (now, stream, list(homes)),
    )
    for home in sorted(set(homes.values())):
        cur.execute("SELECT ephq.ring(%s)", (home,))
    return list(homes)
