"""Recycled message files: an acked file is kept in pool/ and overwritten by a later enqueue.

Why: on ext4 without a journal (these machines' root file system) a new inode is slow to allocate
for minutes after many were freed, because the allocator skips recently deleted inodes, and
freeing a file's blocks issues a discard (~70 µs with the discard mount option). A queue that
creates a file per enqueue and unlinks it on ack pays both on every message. Reusing files keeps
the steady state, and a drain followed by the next burst, from allocating or freeing anything.

Privacy: an acked message's content must not stay readable, so ack overwrites the file with
zeros (zeros keep the block; truncation would free it and cost a discard). The acker locks the
file before moving it into its slot and zeroes it under that lock; whoever takes a file from the
pool locks it before writing, so a producer never writes into a file still being zeroed. (A
process killed between the move and the zeroing leaves one unscrubbed file in the pool until a
producer overwrites it.)

The pool is bounded: at most SLOTS files, each of at most MAX_KEPT_BYTES (bigger ones are freed:
a few large messages must not pin megabytes). bench/pool.py measures the trade-off between the
pool's size, the disk it keeps and the cost of a drain. It has a directory of its own so that
what lists tmp/ (recovery, on every reap) does not list thousands of pooled files too.
"""

from __future__ import annotations

import fcntl
import os
import time

from .fsio import FILE_MODE, listdir

SLOTS = 4096
MAX_KEPT_BYTES = 16384
FREE_SUFFIX = ".free"
# Random slots tried before the pool is listed or taken for full.
_DRAWS = 4
# When the pool was found empty (full), look again only after this long: a producer-only
# workload would otherwise list the pool on every enqueue, and a long drain draw slots on every
# ack, for nothing.
_RETRY_NS = 50_000_000


class FilePool:
    def __init__(self, pool_dir: str) -> None:
        self.dir = pool_dir
        self._hints: list[str] = []
        self._look_after_ns = 0
        self._full_until_ns = 0
        self._empties: list[str] = []
        self._gives = 0  # slots this process found by drawing

    def give(self, path: str) -> None:
        """Take an acked file out of its state and keep it for reuse (or free it).

        Raises FileNotFoundError when the file was not there: someone else moved it first.
        """
        slot = self._empty_slot()
        if slot is None:  # the pool is full (or off): a drain; free the file
            os.unlink(path)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size > MAX_KEPT_BYTES:
                os.unlink(path)
                return
            # Only the rename makes the file ours: until then a reaper or nack may move it.
            try:
                os.rename(path, f"{self.dir}/{slot}")
            except FileNotFoundError:
                if not os.path.lexists(path):
                    raise  # someone else moved it first
                os.unlink(path)  # no pool/ (a store made before it had one): free the file
                return
            os.pwrite(fd, bytes(size), 0)
        finally:
            os.close(fd)
        self._hints.append(slot)  # this process's next enqueue can have it at once

    def _empty_slot(self) -> str | None:
        """A slot with no file in it, or None when the pool is full (or off).

        A few random draws serve a process's first acks (a lone `ephq ack` must not list
        thousands of pooled files: ~1.5 ms); a process that keeps acking lists the pool once
        after a collision and uses up its empty slots before looking again.
        """
        try:
            return self._empties.pop()
        except IndexError:  # none left (or another thread of this process took the last)
            pass
        if not SLOTS or time.monotonic_ns() < self._full_until_ns:
            return None
        for _ in range(_DRAWS):
            slot = f"{int.from_bytes(os.urandom(4), 'little') % SLOTS}{FREE_SUFFIX}"
            if not os.path.lexists(f"{self.dir}/{slot}"):
                self._gives += 1
                return slot
        if self._gives < _DRAWS:  # a short-lived process: free this file, keep the pool as is
            return None
        present = set(listdir(self.dir))
        empties = [n for n in (f"{i}{FREE_SUFFIX}" for i in range(SLOTS)) if n not in present]
        if len(empties) < SLOTS // 64:  # (nearly) full: a drain; stop looking for a while
            self._full_until_ns = time.monotonic_ns() + _RETRY_NS
        start = int.from_bytes(os.urandom(4), "little") % max(1, len(empties))
        self._empties = empties[start:] + empties[:start]  # concurrent ackers spread out
        try:
            return self._empties.pop()
        except IndexError:
            return None

    def open_new(self, path: str) -> int:
        """A writable file at path (which must not exist yet): recycled if the pool has one.

        A recycled file is returned locked (see the module's note on privacy) and may hold
        zeros: the writer overwrites from the start and truncates to what it wrote.
        """
        while True:
            free = self._next_free()
            if free is None:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                os.rename(f"{self.dir}/{free}", path)
            except FileNotFoundError:
                continue  # another producer took it first
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd

    def _next_free(self) -> str | None:
        try:
            return self._hints.pop()
        except IndexError:
            pass
        now = time.monotonic_ns()
        if now < self._look_after_ns:
            return None
        self._hints = [n for n in listdir(self.dir) if n.endswith(FREE_SUFFIX)]
        if not self._hints:
            self._look_after_ns = now + _RETRY_NS
            return None
        try:
            return self._hints.pop()
        except IndexError:  # another thread emptied it
            return None
