"""Who holds which lease: each worker's row in ephq.holders, believed only while the database
connection that wrote it lives; the leases of workers that are gone come back at once."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import psycopg

from .. import forking
from .connection import Connections

# For this long after the server (re)started, a row written before that start, whose connection
# is gone, is not taken for a dead worker's: a restart ends every connection, and a live
# worker's keeper writes its rows again on a new one (at least every keeping.REPUBLISH_EVERY_S)
# before anyone gives its leases away. (A worker that died across the restart has its leases
# back that much later.) A row written since the start whose connection is gone is a dead
# worker's at once.
RESTART_GRACE_S = 10
# Leases that workers now gone had announced come back now, as if they had run out: the
# holders' rows whose connections have ended are deleted, and the messages they held made
# visible (a receipt is <deadline>.<id>.<attempts>.<token>, after 'dlq:' for a dead letter's).
RELEASE_ORPHANS = r"""
WITH gone AS (
    DELETE FROM ephq.holders h
    WHERE h.stream = %(stream)s AND h.dead = %(dead)s
      AND h.backend_pid NOT IN (SELECT pid FROM pg_stat_activity)
      AND (h.written_at > pg_postmaster_start_time()
           OR now() - pg_postmaster_start_time() > %(grace)s * interval '1 second')
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
# A consumer looks for the leases of workers that are gone at most this often per stream.
ORPHAN_LOOK_EVERY_NS = 1_000_000_000


def orphans_of(stream: str, dead: bool, now: int) -> dict[str, object]:
    """RELEASE_ORPHANS's parameters."""
    return {"stream": stream, "dead": dead, "now": now, "grace": RESTART_GRACE_S}


# A holder's row, written (again, in place of its row old, if any) on this connection. The old
# row is deleted only if it is still this holder's: an id is another row's once the table was
# made anew (a schema dropped, a database restored), and that holder's leases would go unsaid.
_REGISTER = """
WITH old AS (
    DELETE FROM ephq.holders
    WHERE id = %(old)s AND host = %(host)s AND pid = %(pid)s AND started_at = %(started_at)s
)
INSERT INTO ephq.holders (stream, dead, backend_pid, host, pid, worker, started_at, leases)
VALUES (%(stream)s, %(dead)s, pg_backend_pid(), %(host)s, %(pid)s, %(worker)s, %(started_at)s,
        %(leases)s)
RETURNING id
"""


class DatabaseHolder:
    """A worker's row in ephq.holders, written on the process's holding connection
    (Connections.holding): the row is believed while that connection's backend lives, so a
    killed worker's row says nothing."""

    def __init__(self, db: Connections, stream: str, dead: bool, worker: str, now: int) -> None:
        conn = db.holding()
        self._conn: psycopg.Connection[Any] | None = conn
        self._db = db
        self._row = {
            "stream": stream,
            "dead": dead,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": worker,
            "started_at": time.time_ns(),
        }
        with db.translated("register a worker"), conn.cursor() as cur:
            # What workers that are gone left (their connections ended): their leases come
            # back now, and their rows go, as the file backend's next worker does.
            cur.execute(RELEASE_ORPHANS, orphans_of(stream, dead, now))
            cur.execute(_REGISTER, self._row | {"old": None, "leases": "{}"})
            row = cur.fetchone()
        self._id = None if row is None else row[0]
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """The row is the parent's, believed while the parent's connection lives: a forked
        child neither writes it nor deletes it (forking.py)."""
        self._conn = None

    def publish(self, leases: dict[str, int]) -> None:
        """Write the leases held (the keeper calls this at least every REPUBLISH_EVERY_S). If the
        row's connection has ended (the server restarted, or dropped it) the row is written
        anew, with its leases, on a new one, in the statement that deletes the old row: no
        moment when the leases are nobody's."""
        if self._conn is None:
            return
        text = json.dumps(leases)
        try:
            if not (self._conn.closed or self._conn.broken):
                with self._conn.cursor() as cur:
                    cur.execute(
                        "UPDATE ephq.holders SET leases = %s"
                        " WHERE id = %s AND backend_pid = pg_backend_pid()",
                        (text, self._id),
                    )
                    if cur.rowcount == 1:
                        return
                # Gone (a check or a consumer took it for a dead worker's, the table was made
                # anew): written anew below, or its leases would never be said again.
        except Exception:
            pass  # write the row anew, below
        try:
            conn = self._db.holding()
            with conn.cursor() as cur:
                cur.execute(_REGISTER, self._row | {"old": self._id, "leases": text})
                row = cur.fetchone()
        except Exception:
            return  # the server is away: the next beat tries again
        self._conn = conn
        self._id = None if row is None else row[0]

    def close(self) -> None:
        if self._conn is None:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute(
                    "DELETE FROM ephq.holders WHERE id = %s AND backend_pid = pg_backend_pid()",
                    (self._id,),
                )
        except Exception:
            pass
        self._conn = None  # the holding connection is the process's (Connections.close)
