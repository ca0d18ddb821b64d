"""`check` on PostgreSQL: the schema is there at this ephq's version, every row of the messages'
tables is a message (rows.py), and no worker that is gone left its row among the holders. The
rest of a row's consistency is the database's to keep."""

from __future__ import annotations

from collections.abc import Callable

from ..message import CheckProblem
from . import quarantine, schema
from .connection import Connections


def check(
    db: Connections, stream: str | None, repair: bool, clock: Callable[[], int]
) -> list[CheckProblem]:
    """What is wrong (for one stream, or all). On repair, rows that are not messages are set
    aside and stale holders removed; what the quarantine holds is listed either way."""
    problems = _schema(db, stream)
    for found in list(quarantine.not_messages(db, stream)):  # read whole before any move
        if repair:
            quarantine.set_aside(db, found, clock())
        problems.append(CheckProblem(found.stream, "unreadable", found.where, found.why, repair))
    problems += _stale_holders(db, stream, repair)
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
