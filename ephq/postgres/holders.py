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

# Leases that workers now gone had announced come back now, as if they had run out: the
# holders' rows whose connections have ended are deleted, and the messages they held made
# visible (a receipt is <deadline>.<id>.<attempts>.<token>, after 'dlq:' for a dead letter's).
RELEASE_ORPHANS = r"""
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
# A consumer looks for the leases of workers that are gone at most this often per stream.
ORPHAN_LOOK_EVERY_NS = 1_000_000_000


class DatabaseHolder:
    """A worker's row in ephq.holders, written on the process's holding connection
    (Connections.holding): the row is believed while that connection's backend lives, so a
    killed worker's row says nothing."""

    def __init__(self, db: Connections, stream: str, dead: bool, worker: str, now: int) -> None:
        conn = db.holding()
        self._conn: psycopg.Connection[Any] | None = conn
        self._db = db
        with db.translated("register a worker"), conn.cursor() as cur:
            # What workers that are gone left (their connections ended): their leases come
            # back now, and their rows go, as the file backend's next worker does.
            cur.execute(RELEASE_ORPHANS, {"stream": stream, "dead": dead, "now": now})
            cur.execute(
                """INSERT INTO ephq.holders (stream, dead, backend_pid, host, pid, worker,
                       started_at)
                   VALUES (%s, %s, pg_backend_pid(), %s, %s, %s, %s) RETURNING id""",
                (stream, dead, socket.gethostname(), os.getpid(), worker, time.time_ns()),
            )
            row = cur.fetchone()
        self._id = None if row is None else row[0]
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """The row is the parent's, believed while the parent's connection lives: a forked
        child neither writes it nor deletes it (forking.py)."""
        self._conn = None

    def publish(self, leases: dict[str, int]) -> None:
        if self._conn is None:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute(
                    "UPDATE ephq.holders SET leases = %s WHERE id = %s",
                    (json.dumps(leases), self._id),
                )
        except Exception:
            pass

    def close(self) -> None:
        if self._conn is None:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute("DELETE FROM ephq.holders WHERE id = %s", (self._id,))
        except Exception:
            pass
        self._conn = None  # the holding connection is the process's (Connections.close)
