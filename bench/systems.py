"""The queues the benchmark compares, behind one small interface: put, get, ack.

Each system is opened per process on a directory of its own. `get` returns (handle, payload) or
None; `ack` takes the handle. Systems without acknowledgement (huey's storages) delete on get
and say so (`acks = False`): they cannot give at-least-once delivery.

The floor is the minimal sequence of os calls with ephq's guarantees, written here with plain
`os`: to enqueue, write a file in tmp/, fsync it (on ext4, XFS and btrfs its name sticks with
it), rename it into ready/ unflushed (a recovery places what a power loss left whole in tmp/);
rename to lease, unlink to ack. It was write + fsync + rename + directory fsync (two flushes)
until ephq's enqueue came down to one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

Handle = Any


class Client:
    acks = True

    def put(self, payload: bytes) -> None:
        raise NotImplementedError

    def get(self) -> tuple[Handle, bytes] | None:
        raise NotImplementedError

    def ack(self, handle: Handle) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def put_many(self, payloads: list[bytes]) -> None:
        """Put a batch at once, all or nothing where the system can; else one by one."""
        for data in payloads:
            self.put(data)

    def fill(self, count: int) -> None:
        """Put count messages as fast as the system allows: the depth phase measures after it.

        Systems whose durable put would take many minutes for a million messages fill with
        their flushing turned off (a benchmark's setup, not a way to run them).
        """
        for i in range(count):
            self.put(payload(i))


class EphqClient(Client):
    def __init__(self, path: str, fsync: bool) -> None:
        from ephq import Queue

        self.q = Queue(path, fsync=fsync)

    def put(self, payload: bytes) -> None:
        self.q.enqueue_json("bench", payload)

    def put_many(self, payloads: list[bytes]) -> None:
        self.q.enqueue_many_json("bench", payloads)

    def get(self) -> tuple[Handle, bytes] | None:
        m = self.q.dequeue("bench", visibility=600)
        return None if m is None else (m.receipt, m.data_json.encode())

    def ack(self, handle: Handle) -> None:
        self.q.ack("bench", handle)

    def fill(self, count: int) -> None:
        from ephq import Queue

        fast = Queue(self.q.home, fsync=False)
        for start in range(0, count, 5000):
            fast.enqueue_many_json(
                "bench", [payload(i) for i in range(start, min(count, start + 5000))]
            )


class FloorClient(Client):
    """Plain os calls: one file per message, named by a sortable stamp, in flat directories."""

    def __init__(self, path: str, fsync: bool) -> None:
        self.fsync = fsync
        self.tmp, self.ready, self.inflight = (
            os.path.join(path, d) for d in ("tmp", "ready", "inflight")
        )
        for d in (self.tmp, self.ready, self.inflight):
            os.makedirs(d, exist_ok=True)
        self.names: list[str] = []
        self.last = 0

    def put(self, payload: bytes) -> None:
        self.last = max(time.time_ns(), self.last + 1)
        name = f"{self.last:016x}{os.getpid():08x}"
        tmp = os.path.join(self.tmp, name)
        fd = self._open_tmp(tmp)
        os.write(fd, payload)
        os.ftruncate(fd, len(payload))  # a recycled file may have held more
        if self.fsync:
            os.fsync(fd)  # its bytes and its name in tmp/: the rename below need not stick
        os.close(fd)
        os.rename(tmp, os.path.join(self.ready, name))

    def _open_tmp(self, tmp: str) -> int:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def fill(self, count: int) -> None:
        durable, self.fsync = self.fsync, False
        super().fill(count)
        self.fsync = durable

    def get(self) -> tuple[Handle, bytes] | None:
        for _ in range(2):
            while self.names:
                name = self.names.pop()
                dest = os.path.join(self.inflight, name)
                try:
                    os.rename(os.path.join(self.ready, name), dest)
                except FileNotFoundError:
                    continue
                with open(dest, "rb") as handle:
                    return dest, handle.read()
            self.names = sorted(os.listdir(self.ready), reverse=True)
        return None

    def ack(self, handle: Handle) -> None:
        os.unlink(handle)


class ReuseFloorClient(FloorClient):
    """The floor, recycling files: ack renames the file aside, enqueue overwrites one.

    The sequence the issue measured at ~57 µs against ~880 µs on this file system: no inode is
    created or freed in the steady state. (No scrubbing: the floor keeps no privacy promise.)
    """

    def __init__(self, path: str, fsync: bool) -> None:
        super().__init__(path, fsync)
        self.free = os.path.join(path, "free")
        os.makedirs(self.free, exist_ok=True)
        self.spare: list[str] = []

    def _open_tmp(self, tmp: str) -> int:
        while self.spare:
            try:
                os.rename(os.path.join(self.free, self.spare.pop()), tmp)
                return os.open(tmp, os.O_WRONLY)
            except FileNotFoundError:
                continue
        return super()._open_tmp(tmp)

    def ack(self, handle: Handle) -> None:
        name = os.path.basename(handle)
        os.rename(handle, os.path.join(self.free, name))
        self.spare.append(name)


class SqliteClient(Client):
    """The table queue many users would write: claim by UPDATE in an immediate transaction."""

    def __init__(self, path: str, synchronous: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(path, "q.db"), timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, data BLOB, visible REAL)"
        )

    def put(self, payload: bytes) -> None:
        self.db.execute("INSERT INTO q (data, visible) VALUES (?, 0)", (payload,))

    def put_many(self, payloads: list[bytes]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO q (data, visible) VALUES (?, 0)", ((p,) for p in payloads))
        self.db.execute("COMMIT")

    def get(self) -> tuple[Handle, bytes] | None:
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        row = self.db.execute(
            "SELECT id, data FROM q WHERE visible <= ? ORDER BY id LIMIT 1", (now,)
        ).fetchone()
        if row is not None:
            self.db.execute("UPDATE q SET visible = ? WHERE id = ?", (now + 600, row[0]))
        self.db.execute("COMMIT")
        return None if row is None else (row[0], row[1])

    def ack(self, handle: Handle) -> None:
        self.db.execute("DELETE FROM q WHERE id = ?", (handle,))

    def fill(self, count: int) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO q (data, visible) VALUES (?, 0)", ((payload(i),) for i in range(count))
        )
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class PersistQueueClient(Client):
    def __init__(self, path: str) -> None:
        from persistqueue import SQLiteAckQueue

        self.q = SQLiteAckQueue(path, multithreading=True, auto_commit=True)

    def put(self, payload: bytes) -> None:
        self.q.put(payload)

    def get(self) -> tuple[Handle, bytes] | None:
        try:
            item = self.q.get(block=False)
        except Exception:  # persistqueue.Empty
            return None
        return item, item

    def ack(self, handle: Handle) -> None:
        self.q.ack(handle)

    def fill(self, count: int) -> None:
        putter: Any = self.q._putter  # its writing connection
        putter.execute("PRAGMA synchronous=OFF")
        super().fill(count)


class DirqClient(Client):
    def __init__(self, path: str) -> None:
        from dirq.QueueSimple import QueueSimple

        self.q = QueueSimple(path)
        self.names: list[str] = []

    def put(self, payload: bytes) -> None:
        self.q.add(payload)

    def get(self) -> tuple[Handle, bytes] | None:
        for _ in range(2):
            while self.names:
                name = self.names.pop()
                if self.q.lock(name):
                    return name, self.q.get(name)
            self.names = sorted(self.q, reverse=True)
        return None

    def ack(self, handle: Handle) -> None:
        self.q.remove(handle)


class LitequeueClient(Client):
    def __init__(self, path: str) -> None:
        from litequeue import LiteQueue

        os.makedirs(path, exist_ok=True)
        self.q = LiteQueue(os.path.join(path, "lq.db"))

    def put(self, payload: bytes) -> None:
        self.q.put(payload.decode())

    def get(self) -> tuple[Handle, bytes] | None:
        m = self.q.pop()
        return None if m is None else (m.message_id, m.data.encode())

    def ack(self, handle: Handle) -> None:
        self.q.done(handle)

    def fill(self, count: int) -> None:
        self.q.conn.execute("PRAGMA synchronous=OFF")
        super().fill(count)


class HueyClient(Client):
    acks = False

    def __init__(self, path: str, kind: str) -> None:
        from huey.storage import FileStorage, SqliteStorage

        os.makedirs(path, exist_ok=True)
        if kind == "sqlite":
            self.s: Any = SqliteStorage("bench", filename=os.path.join(path, "huey.db"))
        else:
            self.s = FileStorage("bench", path=path)

    def put(self, payload: bytes) -> None:
        self.s.enqueue(payload)

    def get(self) -> tuple[Handle, bytes] | None:
        data = self.s.dequeue()
        return None if data is None else (None, bytes(data))

    def ack(self, handle: Handle) -> None:
        pass  # nothing to ack: the message was deleted when it was taken

    def fill(self, count: int) -> None:
        if hasattr(self.s, "conn"):
            self.s.conn.execute("pragma synchronous=0")
        super().fill(count)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


SYSTEMS: dict[str, tuple[Callable[[str], Client], str | None]] = {
    "ephq": (lambda p: EphqClient(p, True), None),
    "ephq no-fsync": (lambda p: EphqClient(p, False), None),
    "floor": (lambda p: FloorClient(p, True), None),
    "floor no-fsync": (lambda p: FloorClient(p, False), None),
    "floor+reuse": (lambda p: ReuseFloorClient(p, True), None),
    "sqlite FULL": (lambda p: SqliteClient(p, "FULL"), None),
    "sqlite NORMAL": (lambda p: SqliteClient(p, "NORMAL"), None),
    "persist-queue": (PersistQueueClient, "persistqueue"),
    "dirq": (DirqClient, "dirq"),
    "litequeue": (LitequeueClient, "litequeue"),
    "huey sqlite": (lambda p: HueyClient(p, "sqlite"), "huey"),
    "huey file": (lambda p: HueyClient(p, "file"), "huey"),
}


def available() -> list[str]:
    return [name for name, (_, module) in SYSTEMS.items() if module is None or _have(module)]


def open_client(name: str, path: str) -> Client:
    return SYSTEMS[name][0](path)


def payload(n: int) -> bytes:
    """A ~200-byte JSON message that carries its own number, to find duplicates and losses."""
    return json.dumps({"n": n, "body": "x" * 170}).encode()


def number(data: bytes) -> int:
    with contextlib.suppress(ValueError):
        return int(json.loads(data)["n"])
    return -1
