"""Connections: one per thread, opened lazily, dropped when broken; errors made ephq's own.

A URL's password never leaves this module: messages name the server by `redacted(url)`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.types.json
from psycopg import errors as pg_errors

from .. import forking
from ..errors import (
    BadInput,
    DiskFull,
    EphqError,
    StorageError,
    StoragePermissionDenied,
    Unavailable,
)
from . import schema

# How long a command waits for an unreachable server before it says so (libpq's
# connect_timeout, unless the URL sets one).
CONNECT_TIMEOUT_S = 10


def redacted(url: str) -> str:
    """The URL without its password: what messages may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class Connections:
    """A connection per thread (handlers run on several), made on first use, closed once its
    thread has ended; schema ensured once per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted(url)
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, psycopg.Connection[Any]]] = []
        self._holding: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._schema_ready = False
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """A forked child makes connections of its own (forking.py)."""
        forking.inherited((self._all, self._holding))
        self._all = []
        self._holding = None
        self._local = threading.local()
        self._lock = threading.Lock()

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new connection of this process's own (listeners and holders keep theirs)."""
        options: dict[str, Any] = {
            "autocommit": autocommit,
            "application_name": f"ephq {socket.gethostname()} {os.getpid()}",
        }
        if "connect_timeout" not in self.url and "PGCONNECT_TIMEOUT" not in os.environ:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            conn = psycopg.connect(self.url, **options)
        except psycopg.ProgrammingError as exc:  # libpq could not read the URL
            why = " ".join(str(exc).split())  # libpq's messages end in a newline
            raise BadInput(f"{self.where} is not a usable database URL: {why}") from None
        except psycopg.Error as exc:
            raise self.error(exc, "connect") from None
        with self.translated("connect"):
            # Until the table has statistics, the planner takes a stream's rows for a handful
            # and would fetch them all by bitmap and sort them to find the oldest: every claim
            # would cost the depth of the queue. Without bitmap scans it walks the primary key
            # in id order and stops at the first visible row. No ephq query needs one.
            conn.execute("SET enable_bitmapscan = off")
        psycopg.types.json.set_json_loads(_json_loads, conn)
        if not self._schema_ready:
            self._ensure_schema(conn)
        return conn

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        with self.translated("create or migrate ephq's schema"):
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "SELECT version FROM ephq.schema_version"
                    if _has_version_table(cur)
                    else "SELECT 0"
                )
                row = cur.fetchone()
                found = int(row[0]) if row else 0
                if found != schema.VERSION:
                    found = schema.ensure(cur)
            if found > schema.VERSION:
                raise StorageError(
                    f"the ephq schema in {self.where} is version {found}, newer than this ephq "
                    f"({schema.VERSION}) knows: upgrade ephq"
                )
        self._schema_ready = True
        self._analyze_if_unknown(conn)

    def _analyze_if_unknown(self, conn: psycopg.Connection[Any]) -> None:
        """ANALYZE a table that has rows but no statistics yet (filled by another process
        faster than autovacuum looks): see PostgresBackend._analyze."""
        with self.translated("read the table's statistics"):
            row = conn.execute(
                """SELECT NOT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = 'ephq'
                                      AND tablename = 'messages' AND attname = 'stream')
                          AND EXISTS (SELECT 1 FROM ephq.messages)"""
            ).fetchone()
            if row is not None and row[0]:
                conn.execute("ANALYZE ephq.messages")

    def get(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self.connect()
            self._local.conn = conn
            self._keep(conn)
        return conn

    def holding(self) -> psycopg.Connection[Any]:
        """The connection that this process's rows in ephq.holders are believed by (holders.py),
        one for all of them: a connection each held one per stream leased from, and a process
        consuming many streams used up the server's connections. A new one if it broke."""
        with self._lock:  # two threads asking at once must not both make one (one would leak)
            old = self._holding
            if old is not None and not (old.closed or old.broken):
                return old
            conn = self._holding = self.connect()
        if old is not None:
            old.close()  # broken: closing it frees what the driver still holds
        return conn

    def _keep(self, conn: psycopg.Connection[Any]) -> None:
        """Note this thread's new connection, and close those of threads that have ended: a
        program that starts a thread per task held a server connection open for every thread
        it ever ran, until the server's max_connections refused every client of the database."""
        with self._lock:
            ended = [c for t, c in self._all if not t.is_alive() or c.closed]
            self._all = [(t, c) for t, c in self._all if t.is_alive() and not c.closed]
            self._all.append((threading.current_thread(), conn))
        for old in ended:
            try:
                old.close()
            except Exception:  # closing is all that is left to do with it
                pass

    def run(self, doing: str, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        """Execute one statement (its own transaction) on this thread's connection; the
        cursor holds its rows. The hot paths' way: no context manager to enter and leave."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self.get()
        try:
            return conn.execute(sql, params)
        except psycopg.Error as exc:
            raise self.error(exc, doing) from None

    @contextmanager
    def cursor(self, doing: str) -> Iterator[psycopg.Cursor[Any]]:
        conn = self.get()
        with self.translated(doing), conn.cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self, doing: str) -> Iterator[psycopg.Cursor[Any]]:
        conn = self.get()
        with self.translated(doing), conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except EphqError:
            raise
        except psycopg.Error as exc:
            raise self.error(exc, doing) from None

    def error(self, exc: psycopg.Error, doing: str) -> EphqError:
        why = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, psycopg.OperationalError) and not isinstance(
            exc, pg_errors.InsufficientPrivilege
        ):
            return Unavailable(
                f"cannot {doing}: the database at {self.where} is unavailable: {why}"
            )
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return StoragePermissionDenied(f"cannot {doing} in {self.where}: {why}")
        if isinstance(exc, pg_errors.DiskFull):
            return DiskFull(f"cannot {doing}: the database at {self.where} is out of space")
        return StorageError(f"cannot {doing} in {self.where}: {why}")

    def close(self) -> None:
        with self._lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()
            if self._holding is not None:
                self._holding.close()
                self._holding = None
        self._local = threading.local()


def _json_loads(raw: bytes | str) -> Any:
    """jsonb as Python: most messages' metadata is empty, which needs no parser."""
    if raw in (b"{}", "{}"):
        return {}
    return json.loads(raw)


def _has_version_table(cur: psycopg.Cursor[Any]) -> bool:
    cur.execute("SELECT to_regclass('ephq.schema_version') IS NOT NULL")
    row = cur.fetchone()
    return bool(row and row[0])
