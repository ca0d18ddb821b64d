"""Waiting for a stream's messages: LISTEN on a connection of the waiter's own.

Every enqueue notifies the stream's own channel (`ephq.channel(stream)`, schema.py) with the
stream's name, inside its transaction, so a notification arrives only once the message is
visible, and only to the consumers of that stream. The Queue clears the waiter before it
looks and waits after, and the LISTEN is in place before the first look: a notification between
the look and the wait is queued, not lost. A notification is only a hint; the Queue's wait also
wakes for the next due message and at least once a second (seconds_until_due), which is the
fallback when notifications are lost with a dropped connection.

A listener outlives the wait it was made for (Listeners): a LISTEN connection made for every
wait started a server process for each long-poll, a worker's every half second, and left the
connection to the garbage collector (a ResourceWarning each).
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import sql

from .. import forking
from ..errors import EphqError
from ..idle import Kept
from .connection import Connections


class Listeners:
    """The backend's listeners between waits: one is taken for each wait and given back after
    it, so there are never more than waits at once, and each is used by one thread at a time.
    A kept listener listens only during a wait (Listener.done)."""

    def __init__(self, db: Connections) -> None:
        self._db = db
        self._idle: Kept[str, Listener] = Kept()  # a connection each: a few at most (idle.py)
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """A forked child listens on connections of its own (forking.py)."""
        forking.inherited(self._idle)
        self._idle = Kept()

    def take(self, stream: str) -> Listener:
        kept = self._idle.take(stream)
        if kept is None:
            return Listener(self._db, stream, self)
        kept.listen()
        return kept

    def give_back(self, listener: Listener) -> None:
        unused = self._idle.give_back(listener.stream, listener)
        if unused is not None:
            unused.close()

    def close(self) -> None:
        for listener in self._idle.all():
            listener.close()


class Listener:
    def __init__(self, db: Connections, stream: str, kept_by: Listeners) -> None:
        self.stream = stream
        self._db = db
        self._kept_by = kept_by
        self._conn: Any = None
        self._statement: sql.Composable | None = None  # LISTEN on the stream's channel
        self._heard = False
        self.listen()

    def listen(self) -> None:
        """LISTEN on the stream's channel, on the connection kept or a new one."""
        try:
            if self._conn is None:
                self._conn = self._db.connect()
            with self._db.translated(f"wait for stream {self.stream!r}"):
                if self._statement is None:
                    row = self._conn.execute("SELECT ephq.channel(%s)", (self.stream,)).fetchone()
                    self._statement = sql.SQL("LISTEN {}").format(sql.Identifier(row[0]))
                self._conn.execute(self._statement)
        except EphqError:
            self.close()  # the server is away: wait() sleeps, and the caller's look fails

    def clear(self) -> None:
        self._heard = False
        self._drain(0)

    def _drain(self, timeout_s: float) -> None:
        if self._conn is None:
            self.listen()
            if self._conn is None:
                time.sleep(timeout_s)
                return
        try:
            for note in self._conn.notifies(timeout=timeout_s, stop_after=None):
                if note.payload == self.stream:
                    self._heard = True
                    return
        except Exception:
            self.close()
            time.sleep(min(timeout_s, 0.1))

    def wait(self, timeout_s: float) -> None:
        if timeout_s <= 0 or self._heard:
            return
        end = time.monotonic() + timeout_s
        while not self._heard:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._drain(left)

    def done(self) -> None:
        """The wait is over: kept for the next one, listening to nothing meanwhile. A connection
        that listens and is not read blocks, once its socket is full, the server process
        sending to it, and with it the server's notification queue: every NOTIFY of the
        database fails once that is full (a process that waited once and then only enqueues)."""
        if self._conn is not None:
            try:
                self._conn.execute("UNLISTEN *")
            except Exception:
                self.close()
        self._kept_by.give_back(self)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
