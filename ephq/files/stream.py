"""A stream's directory: its own store, its dead-letter queue's store, its settings and its lock.

    <home>/<stream>/
        stream.json          settings (config.py)
        bell                 touched when messages become visible (doorbell.py)
        lock                 the filelock for configure, purge and check --repair
        ready/ delayed/ inflight/ tmp/        the stream's messages (store.py)
        pool/                acked files kept for reuse (pool.py)
        dlq/ready/ dlq/delayed/ dlq/inflight/ dlq/tmp/ dlq/pool/   its dead letters, consumed like
                             a stream

Only configure, purge and check(repair) take the lock: each is a read-modify-write of more than
one file that must not interleave with another of them. Enqueue, dequeue, ack, nack and extend
never take it: each is one rename, and rename decides every race between them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..message import StreamConfig
from .config import ConfigFile
from .names import IdSource
from .store import Clock, Store

LOCK_FILE = "lock"


class Stream:
    def __init__(self, home: str, name: str, *, durable: bool, clock: Clock, ids: IdSource):
        self.name = name
        self.path = os.path.join(home, name)
        self.dead = Store(
            os.path.join(self.path, "dlq"),
            name,
            durable=durable,
            clock=clock,
            ids=ids,
            graveyard=None,
        )
        self.main = Store(
            self.path, name, durable=durable, clock=clock, ids=ids, graveyard=self.dead
        )
        self.config_file = ConfigFile(self.path)

    def store(self, dead: bool) -> Store:
        return self.dead if dead else self.main

    def config(self) -> StreamConfig:
        return self.config_file.load()

    def max_attempts(self, dead: bool) -> int | None:
        """Dead letters are never dead-lettered again, however often their consumers fail."""
        return None if dead else self.config().max_attempts

    def exists(self) -> bool:
        return self.main.exists()

    def create(self) -> None:
        self.main.create()
        self.dead.create()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        from filelock import FileLock  # imported here: it costs ~10 ms that enqueue never pays

        self.create()
        with FileLock(os.path.join(self.path, LOCK_FILE), mode=0o600):
            yield
