"""Who holds a stream's leases: each worker announces itself in <stream>/holders/.

    holders/holder-<pid>-<token>.json
        {"host": …, "pid": …, "worker": …, "started_at": …, "dlq": …,
         "leases": {receipt: leased at (ns), …}}

A worker creates its file and keeps it flocked while it lives, and rewrites it in place (the
lock is on the inode) when its leases change: a command worker as it takes each lease, others
at most every few tenths of a second (off the hot path, so a lease younger than that may show
no holder yet). A reader believes a holder file only while its lock is held: a dead worker's
file says nothing; the next reap gives its leases back and removes it (orphaned_leases), and
`check --repair` removes one it cannot read. Like every file in the store, a holder file is read
without following links, bounded in size, and skipped when it does not parse.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from .. import forking
from ..errors import BadInput
from .fsio import NotOurs, ensure_dir, listdir, read_regular, try_lock, unlink_quietly
from .names import TimedName, new_token, parse_receipt

HOLDERS = "holders"
HOLDER_NAME = re.compile(r"holder-[0-9]{1,10}-[0-9a-f]{8}\.json", re.ASCII)
MAX_HOLDER_BYTES = 4 << 20
# A holder file is locked right after it is created; one older than this with a free lock is a
# dead worker's.
STALE_AFTER_NS = 10 * 1_000_000_000


class HolderFile:
    """This process's announcement as the holder of some of a store's leases."""

    def __init__(self, store_path: str, worker: str, dead: bool, *, durable: bool) -> None:
        directory = os.path.join(store_path, HOLDERS)
        ensure_dir(directory, durable=durable)
        self.path = os.path.join(directory, f"holder-{os.getpid()}-{new_token()}.json")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._size = 0
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        head = {
            # What gethostname(2) answers, without importing socket (3.5 ms of a worker's
            # start-up, for one call).
            "host": os.uname().nodename,
            "pid": os.getpid(),
            "worker": worker,
            "started_at": time.time_ns(),
            "dlq": dead,
        }
        # Everything before the leases, encoded once: only they change from one publish to
        # the next (a command worker publishes at every lease it takes).
        encoded = json.dumps(head, separators=(",", ":")).encode()
        self._before_leases = encoded[:-1] + b',"leases":'
        self.publish({})
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """The file announces the parent, locked while a process has it open: a forked child
        lets go of its copy of the descriptor (the lock stays the parent's, and ends with it)
        and neither writes nor removes the file (forking.py)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def publish(self, leases: dict[str, int]) -> None:
        """Say which leases this process holds now: receipt -> when it was leased (ns)."""
        if self._fd < 0:
            return
        data = self._before_leases + json.dumps(leases, separators=(",", ":")).encode() + b"}"
        # Shorter than before: padded with spaces to the old length, so that a process killed
        # between the write and the cut leaves JSON that parses, never the old tail after it.
        os.pwrite(self._fd, data.ljust(self._size), 0)
        if len(data) < self._size:
            os.ftruncate(self._fd, len(data))
        self._size = len(data)

    def close(self) -> None:
        if self._fd >= 0:
            unlink_quietly(self.path)
            os.close(self._fd)
            self._fd = -1


def live_holders(store_path: str) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
    """(message id, lease token) -> (the holder's host, pid, worker…, when it leased it), for
    every lease a live worker announced."""
    directory = os.path.join(store_path, HOLDERS)
    held: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    for name in listdir(directory):
        path = os.path.join(directory, name)
        if HOLDER_NAME.fullmatch(name) is None or _is_stale(path):
            continue
        doc = _read(path)
        if doc is None:
            continue
        leases = doc.pop("leases")
        for receipt, leased_at in leases.items():
            try:
                lease = parse_receipt(receipt).lease
            except BadInput:  # whatever a damaged file says, it says nothing
                continue
            if isinstance(leased_at, int) and lease.token is not None:
                held[(lease.id, lease.token)] = (doc, leased_at)
    return held


def _read(path: str) -> dict[str, Any] | None:
    try:
        raw, _ = read_regular(path, MAX_HOLDER_BYTES)
        doc = json.loads(raw)
    except (OSError, NotOurs, ValueError):
        return None  # gone, not a file, or caught mid-rewrite: no holder to name
    fields = {"host": str, "pid": int, "worker": str, "started_at": int, "leases": dict}
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), t) for k, t in fields.items()):
        return None
    return {key: doc[key] for key in (*fields, "dlq")}


def _older_than_creation(path: str) -> bool:
    """Past the moment between a holder file's creation and its first lock."""
    try:
        return time.time_ns() - os.lstat(path).st_ctime_ns >= STALE_AFTER_NS
    except FileNotFoundError:
        return False


def _is_stale(path: str) -> bool:
    """Nobody holds its lock: its worker is gone (or it is not a holder file at all)."""
    try:
        fd = try_lock(path)
    except (NotOurs, OSError):
        return True
    if fd is None:
        return False
    os.close(fd)
    return True


def stale_files(directory: str) -> list[str]:
    """Holder files whose workers are gone, past the moment between creating and locking."""
    now = time.time_ns()
    found = []
    for name in listdir(directory):
        path = os.path.join(directory, name)
        if HOLDER_NAME.fullmatch(name) is None:
            continue
        try:
            if now - os.lstat(path).st_ctime_ns < STALE_AFTER_NS:
                continue
        except FileNotFoundError:
            continue
        if _is_stale(path):
            found.append(path)
    return found


def orphaned_leases(directory: str, dead: bool) -> Iterator[TimedName]:
    """The leases that workers now gone had announced: of the stream's own messages, or with
    dead of its dead letters. Each holder's file stays locked by us while its leases are
    yielded, so two processes never give back the same ones, and is removed after."""
    for name in listdir(directory):
        path = os.path.join(directory, name)
        if HOLDER_NAME.fullmatch(name) is None:
            continue
        try:
            fd = try_lock(path)
        except (NotOurs, OSError):
            continue
        if fd is None:
            continue  # its worker lives (or the file is gone)
        try:
            doc = _read(path)
            if doc is None and _older_than_creation(path):
                unlink_quietly(path)  # damaged: it names no lease, which keep their deadlines
                continue
            if doc is None or bool(doc.get("dlq")) != dead:
                continue  # being created (empty yet), or the other queue's
            for receipt in doc["leases"]:
                try:
                    yield parse_receipt(receipt).lease
                except BadInput:
                    continue
            unlink_quietly(path)
        finally:
            os.close(fd)
