"""A stream's directory: its own store, its dead-letter queue's store, its settings and its lock.

    <home>/<stream>/
        stream.json          settings (config.py)
        bell                 touched when messages become visible (doorbell.py)
        census               the last count of each leaf, for stats (census.py)
        lock                 flocked by configure, purge and check --repair
        holders/             the workers holding leases, each flocking its file (holders.py)
        receives-dead-letters   there when it is another stream's dead-letter stream
        keys/                deduplication keys taken within the stream's window (dedup.py)
        groups/              message groups: each one's head and waiting messages (groups.py)
        ready/ delayed/ inflight/ tmp/        the stream's messages (store.py)
        pool/                acked files kept for reuse (pool.py)
        quarantine/          what was found in the store but is not ephq's (quarantine.py)
        dlq/ready/ dlq/delayed/ dlq/inflight/ dlq/tmp/ dlq/pool/   its dead letters, consumed like
                             a stream

Only configure, purge and check(repair) take the lock: each is a read-modify-write of more than
one file that must not interleave with another of them. Enqueue, dequeue, ack, nack and extend
never take it: each is one rename, and rename decides every race between them.

The first time a process uses a stream it checks that each of these is what it should be (a
directory, or a regular file), never through a link, and sets aside anything else: a link where
ready/ should be must not lead a producer out of the home.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StorageError
from ..message import StreamConfig
from .config import ConfigFile
from .dedup import KEYS, DedupKeys
from .fsio import NotOurs, describe_kind, fsync_dir, is_real_dir, open_regular
from .groups import GROUPS, Groups
from .holders import HOLDERS
from .names import IdSource
from .quarantine import Quarantine
from .store import Clock, Store

LOCK_FILE = "lock"
# Made the first time another stream's dead letter arrives: only then does redriving the
# stream look through its messages for ones to send back (backend.py).
DEAD_LETTER_MARK = "receives-dead-letters"
STORE_DIRS = ("ready", "delayed", "inflight", "tmp", "pool")
STORE_FILES = ("bell", "census")


class Stream:
    def __init__(self, home: str, name: str, *, durable: bool, clock: Clock, ids: IdSource):
        self.name = name
        self.path = os.path.join(home, name)
        self.quarantine = Quarantine(self.path)
        self.dead = Store(
            os.path.join(self.path, "dlq"),
            name,
            durable=durable,
            clock=clock,
            ids=ids,
            graveyard=None,
            quarantine=self.quarantine,
            holders_dir=os.path.join(self.path, HOLDERS),
        )
        self.main = Store(
            self.path,
            name,
            durable=durable,
            clock=clock,
            ids=ids,
            graveyard=self.dead,
            quarantine=self.quarantine,
            holders_dir=os.path.join(self.path, HOLDERS),
        )
        self.config_file = ConfigFile(self.path)
        self.main.groups = Groups(
            self.path,
            durable=durable,
            clock=clock,
            set_aside=self.main._set_aside_dir,
            place_out=self.main.file_in,
        )
        self.keys = DedupKeys(self.path, self.quarantine, durable=durable, clock=clock)

    def store(self, dead: bool) -> Store:
        return self.dead if dead else self.main

    def config(self) -> StreamConfig:
        return self.config_file.load()

    def max_attempts(self, dead: bool) -> int | None:
        """Dead letters are never dead-lettered again, however often their consumers fail."""
        return None if dead else self.config().max_attempts

    def exists(self) -> bool:
        return self.foreign_self() is None and self.main.exists()

    def create(self) -> None:
        self.main.create()
        self.dead.create()

    def foreign_self(self) -> str | None:
        """What the stream's path is, if something other than a directory stands there."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return None
        return None if stat.S_ISDIR(mode) else describe_kind(mode)

    def verify(self) -> None:
        """Set aside whatever stands where the stream's directories and files belong.

        StorageError if the stream's own path is not a directory: ephq does not follow it.
        """
        kind = self.foreign_self()
        if kind is not None:
            raise StorageError(
                f"{self.path} is {kind}, not a stream's directory (ephq follows no link in its "
                "home): move it away, or let `ephq check --repair` set it aside"
            )
        if is_real_dir(self.path) is None:
            return
        for path, want_dir in self.layout():
            if want_dir:
                if is_real_dir(path) is False:
                    self.quarantine.take(path)
            else:
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        self.quarantine.take(path)
                except FileNotFoundError:
                    continue

    def layout(self) -> Iterator[tuple[str, bool]]:
        """Every fixed path of the stream, and whether it is a directory (else a file)."""
        yield self.dead.path, True
        for store in (self.main, self.dead):
            for sub in STORE_DIRS:
                yield os.path.join(store.path, sub), True
            for sub in STORE_FILES:
                yield os.path.join(store.path, sub), False
        yield self.config_file.path, False
        yield os.path.join(self.path, LOCK_FILE), False
        yield os.path.join(self.path, HOLDERS), True
        yield os.path.join(self.path, KEYS), True
        yield os.path.join(self.path, GROUPS), True
        yield os.path.join(self.path, DEAD_LETTER_MARK), False

    def receives_dead_letters(self) -> bool:
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.path, DEAD_LETTER_MARK)).st_mode)
        except FileNotFoundError:
            return False

    def mark_dead_letter_stream(self, *, durable: bool) -> None:
        """Say (once) that other streams' dead letters arrive here."""
        if self.receives_dead_letters():
            return
        try:
            fd, _ = open_regular(
                os.path.join(self.path, DEAD_LETTER_MARK), os.O_WRONLY | os.O_CREAT
            )
        except NotOurs as exc:
            self.quarantine.set_aside(os.path.join(self.path, DEAD_LETTER_MARK), exc)
            return
        os.close(fd)
        if durable:
            fsync_dir(self.path)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the stream's lock (blocking until other holders are done)."""
        self.create()
        path = os.path.join(self.path, LOCK_FILE)
        for _ in range(2):
            try:
                fd, _ = open_regular(path, os.O_RDWR | os.O_CREAT)
            except NotOurs as exc:
                self.quarantine.set_aside(path, exc)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
            return
        raise StorageError(f"cannot lock stream {self.name!r}: {path} is not a file ephq made")
