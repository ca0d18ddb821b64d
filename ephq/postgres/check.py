"""`check` on PostgreSQL: the schema is there at this ephq's version, every row of the messages'
tables is a message (rows.py), every stream's settings are within the bounds `ephq config`
keeps, and no worker that is gone left its row among the holders. The rest of a row's
consistency is the database's to keep."""

from __future__ import annotations

from collections.abc import Callable

from ..ids import is_stream_name
from ..message import MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, CheckProblem, StreamConfig
from . import quarantine, schema
from .browse import require_stream
from .connection import Connections


def check(
    db: Connections, stream: str | None, repair: bool, clock: Callable[[], int]
) -> list[CheckProblem]:
    """What is wrong (for one stream, or all). On repair, rows that are not messages are set
    aside and stale holders removed; what the quarantine holds is listed either way."""
    if stream is not None:  # a typo must not pass for a stream without fault
        with db.cursor(f"check stream {stream!r}") as cur:
            require_stream(cur, stream, db.where)
    problems = _schema(db, stream)
    for found in list(quarantine.not_messages(db, stream)):  # read whole before any move
        if repair:
            quarantine.set_aside(db, found, clock())
        problems.append(CheckProblem(found.stream, "unreadable", found.where, found.why, repair))
    problems += _stale_holders(db, stream, repair)
    problems += _settings_out_of_bounds(db, stream, repair)
    if stream is None:
        problems += _streams_without_a_name(db, repair)
    for n, kept_stream, message_id, why in quarantine.kept(db, stream):
        problems.append(
            CheckProblem(
                kept_stream,
                "quarantined",
                f"ephq.quarantine row {n}",
                f"set aside, id {message_id!r}: {why}",
                repaired=True,
            )
        )
    return problems


def _schema(db: Connections, stream: str | None) -> list[CheckProblem]:
    with db.cursor("check the database") as cur:
        cur.execute("SELECT version FROM ephq.schema_version")
        row = cur.fetchone()
    if row is not None and row[0] == schema.VERSION:
        return []
    found = f"schema version {row and row[0]}, expected {schema.VERSION}"
    return [CheckProblem(stream or "", "schema", db.where, found)]


def _stale_holders(db: Connections, stream: str | None, repair: bool) -> list[CheckProblem]:
    with db.cursor("check the holders") as cur:
        cur.execute(
            """SELECT id, stream FROM ephq.holders
               WHERE backend_pid NOT IN (SELECT pid FROM pg_stat_activity)
                 AND (%(stream)s::text IS NULL OR stream = %(stream)s)""",
            {"stream": stream},
        )
        stale = cur.fetchall()
        if repair and stale:
            cur.execute("DELETE FROM ephq.holders WHERE id = ANY(%s)", ([r[0] for r in stale],))
    return [
        CheckProblem(
            holder_stream,
            "stale-holder",
            f"ephq.holders id {holder_id}",
            "left by a worker that is gone",
            repaired=repair,
        )
        for holder_id, holder_stream in stale
    ]


def settings_in_bounds(config: StreamConfig) -> bool:
    """Whether settings read from a stream's row are what `ephq config` takes (as the schema's
    constraint says, for rows written since)."""
    target = config.dead_letter_stream
    return (
        config.max_attempts >= 1
        and config.visibility > 0
        and MIN_MAX_MESSAGE_BYTES <= config.max_size <= MAX_MESSAGE_BYTES
        and config.dedup_window > 0
        and (target is None or is_stream_name(target))
    )


def _settings_out_of_bounds(
    db: Connections, stream: str | None, repair: bool
) -> list[CheckProblem]:
    """Streams whose rows hold settings out of bounds (written before the schema forbade it):
    the defaults apply; --repair writes them."""
    with db.cursor("check the streams' settings") as cur:
        cur.execute(
            f"""SELECT name FROM ephq.streams
                WHERE NOT ({schema.SETTINGS_IN_BOUNDS})
                  AND (%(stream)s::text IS NULL OR name = %(stream)s)
                ORDER BY name""",
            {"stream": stream},
        )
        names = [row[0] for row in cur.fetchall()]
        if repair and names:
            cur.execute(
                """UPDATE ephq.streams SET max_attempts = DEFAULT, visibility_ms = DEFAULT,
                       max_size = DEFAULT, dedup_window_ms = DEFAULT, dead_letter_stream = NULL
                   WHERE name = ANY(%s)""",
                (names,),
            )
    return [
        CheckProblem(
            name,
            "bad-config",
            f"ephq.streams row {name!r}",
            "settings out of bounds; defaults apply",
            repaired=repair,
        )
        for name in names
    ]


def _streams_without_a_name(db: Connections, repair: bool) -> list[CheckProblem]:
    """Rows of ephq.streams (written by hand) whose name no command can give: nothing can use
    them; --repair deletes them (their messages are set aside with the other rows)."""
    with db.cursor("check the streams' names") as cur:
        cur.execute("SELECT name FROM ephq.streams ORDER BY name")
        names = [row[0] for row in cur.fetchall() if not is_stream_name(row[0])]
        if repair and names:
            cur.execute("DELETE FROM ephq.streams WHERE name = ANY(%s)", (names,))
    return [
        CheckProblem(
            name, "foreign", f"ephq.streams row {name!r}", "not a stream name", repaired=repair
        )
        for name in names
    ]
