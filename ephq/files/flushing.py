"""Group commit: the durable enqueues of a store share flushes of the file system.

A durable single enqueue writes its message into tmp/ and then needs one flush of the file
system (syncfs(2): every file's bytes and every directory entry) that began after its write
finished; then it may move the message into place without flushing again (store.py, recovery.py).
Producers that write while another's flush is running wait for it to end and then one of them
flushes for all of them, so N concurrent producers pay about one flush per round, not N.

    <store>/flushes     two little-endian 64-bit counts: the last flush begun, the last finished
    <store>/            its flock is held by the producer flushing for the others

The protocol, across processes:
  1. after its write, a producer reads `begun` (under a shared flock of flushes: the count is
     rewritten in place, and a read racing that write could see a mix of both);
  2. it waits for the store directory's flock, then reads `finished`: a flush numbered above
     the `begun` it read began after its write, so if `finished` passed it, it is done;
  3. otherwise it leads: writes begun + 1, flushes, writes finished = that number.
The counts need not survive a crash (nobody waits across one): after a reboot they may be
anything, and a `finished` above `begun` is not believed.

Threads of one process take turns through a lock: they share the files' open descriptions, and
flock does not exclude one holder of a description from another.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading

from . import fsio
from .fsio import NotOurs, open_regular
from .pool import SetAside

FLUSHES = "flushes"
_COUNTS = struct.Struct("<QQ")


class SharedFlush:
    def __init__(self, store_dir: str, set_aside: SetAside) -> None:
        self.path = os.path.join(store_dir, FLUSHES)
        self._store_dir = store_dir
        self._set_aside = set_aside
        self._turn = threading.Lock()
        self._fds: tuple[int, int, int] | None = None  # (pid, counts, store dir)

    def after(self, fd: int) -> None:
        """Return once a flush of fd's file system that began after this call has finished."""
        counts, store_dir = self._open()
        fcntl.flock(counts, fcntl.LOCK_SH)
        try:
            mine = _read(counts)[0]
        finally:
            fcntl.flock(counts, fcntl.LOCK_UN)
        with self._turn:
            fcntl.flock(store_dir, fcntl.LOCK_EX)
            try:
                begun, finished = _read(counts)
                if mine < finished <= begun:
                    return  # someone flushed for us while we waited
                number = max(begun, finished) + 1
                _write(counts, number, finished)
                fsio.sync_file_system(fd)  # through the module: the crash explorer wraps it
                _write(counts, number, number)
            finally:
                fcntl.flock(store_dir, fcntl.LOCK_UN)

    def _open(self) -> tuple[int, int]:
        """The fds of the counts and of the store directory, opened once per process."""
        fds = self._fds
        if fds is not None and fds[0] == os.getpid():
            return fds[1], fds[2]
        with self._turn:
            if self._fds is not None and self._fds[0] == os.getpid():
                return self._fds[1], self._fds[2]
            counts = self._open_counts()
            try:
                store_dir = os.open(self._store_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except BaseException:
                os.close(counts)
                raise
            # After a fork the parent's fds are left open, not closed: they are its own.
            self._fds = (os.getpid(), counts, store_dir)
            return counts, store_dir

    def _open_counts(self) -> int:
        for _ in range(2):
            try:
                fd, _ = open_regular(self.path, os.O_RDWR | os.O_CREAT)
            except NotOurs as exc:  # a link or a directory where the counts belong
                self._set_aside(self.path, exc)
                continue
            return fd
        raise NotOurs(f"{self.path} keeps being replaced by something that is not a file")

    def close(self) -> None:
        fds, self._fds = self._fds, None
        if fds is not None and fds[0] == os.getpid():
            os.close(fds[1])
            os.close(fds[2])


def _read(fd: int) -> tuple[int, int]:
    raw = os.pread(fd, _COUNTS.size, 0)
    if len(raw) < _COUNTS.size:
        return 0, 0  # new, or cut short by a crash: counts restart
    begun, finished = _COUNTS.unpack(raw)
    return begun, finished


def _write(fd: int, begun: int, finished: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        os.pwrite(fd, _COUNTS.pack(begun, finished), 0)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
