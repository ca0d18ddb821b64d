"""Recycled message files: an acked file is kept in tmp/ and overwritten by a later enqueue.

Why: on ext4 without a journal (these machines' root file system) a new inode is slow to allocate
for minutes after many were freed, because the allocator skips recently deleted inodes; a queue
that creates a file per enqueue and unlinks it on ack pays that on every message. Reusing files
keeps the steady state from allocating or freeing inodes at all.

Privacy: an acked message's content must not stay readable, so ack first renames the file to a
name only it knows (<token>.scrub), overwrites it with zeros there, and only then offers it as
<slot>.free. Scrubbing it under the shared name would race with a producer taking it. A writer
of a recycled file truncates it to what it wrote.
The pool is bounded: a file given to a full slot replaces (frees) the one there.
"""

from __future__ import annotations

import os
import time

from .fsio import FILE_MODE, listdir
from .names import new_token

SLOTS = 128
FREE_SUFFIX = ".free"
SCRUB_SUFFIX = ".scrub"
# When the pool was found empty, look again only after this long (a producer-only workload
# would otherwise list tmp/ on every enqueue for nothing).
_EMPTY_RETRY_NS = 50_000_000


def _zero(path: str) -> None:
    """Overwrite a file's bytes with zeros in place.

    Zeros rather than truncation: freeing the blocks would make the file system discard them
    (~70 µs here with the discard mount option) and the next writer allocate them again.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
    finally:
        os.close(fd)


class FilePool:
    def __init__(self, tmp_dir: str) -> None:
        self.tmp = tmp_dir
        self._hints: list[str] = []
        self._look_after_ns = 0

    def give(self, path: str) -> None:
        """Take an acked file out of its state and keep it for reuse.

        Raises FileNotFoundError when the file was not there: someone else moved it first.
        """
        slot = f"{int.from_bytes(os.urandom(2), 'little') % SLOTS}{FREE_SUFFIX}" if SLOTS else ""
        if not slot or os.path.exists(os.path.join(self.tmp, slot)):
            # The pool is full (or off): a drain. Freeing this file costs less than scrubbing
            # it only to free the one it would displace.
            os.unlink(path)
            return
        private = os.path.join(self.tmp, new_token() + SCRUB_SUFFIX)
        os.rename(path, private)  # from here on the file is ours alone
        try:
            _zero(private)
            os.rename(private, os.path.join(self.tmp, slot))
        except OSError:
            os.unlink(private)
            return
        self._hints.append(slot)  # this process's next enqueue can have it at once

    def open_new(self, path: str) -> int:
        """A writable, empty or recycled file at path (which must not exist yet)."""
        while True:
            free = self._next_free()
            if free is None:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                os.rename(os.path.join(self.tmp, free), path)
            except FileNotFoundError:
                continue  # another producer took it first
            return os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def _next_free(self) -> str | None:
        try:
            return self._hints.pop()
        except IndexError:
            pass
        now = time.monotonic_ns()
        if now < self._look_after_ns:
            return None
        self._hints = [n for n in listdir(self.tmp) if n.endswith(FREE_SUFFIX)]
        if not self._hints:
            self._look_after_ns = now + _EMPTY_RETRY_NS
            return None
        try:
            return self._hints.pop()
        except IndexError:  # another thread emptied it
            return None
