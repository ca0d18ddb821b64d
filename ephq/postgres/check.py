"""`check` on PostgreSQL: the schema is there at this ephq's version, and no worker that is gone
left its row among the holders. Rows are the database's to keep consistent."""

from __future__ import annotations

from ..message import CheckProblem
from . import schema
from .connection import Connections


def check(db: Connections, stream: str | None, repair: bool) -> list[CheckProblem]:
    """What is wrong (for one stream, or all); stale holders are removed on repair."""
    problems: list[CheckProblem] = []
    with db.cursor("check the database") as cur:
        cur.execute("SELECT version FROM ephq.schema_version")
        row = cur.fetchone()
        if row is None or row[0] != schema.VERSION:
            problems.append(
                CheckProblem(
                    stream or "",
                    "schema",
                    db.where,
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
