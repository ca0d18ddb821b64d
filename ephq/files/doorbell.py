"""Waiting for a stream's bell without burning CPU: inotify on Linux, a slow poll elsewhere.

Whoever makes a message visible touches the stream's bell file (store.ring); a waiter watches that
file's attributes. The watch is set before the waiter last looks at the queue, so a ring between
its look and its sleep is never lost: it is waiting in the inotify queue.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import select
from collections.abc import Callable

_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_DONT_FOLLOW = 0x02000000  # a link in the bell's place is never followed out of the home
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_FALLBACK_POLL_S = 0.05


@functools.cache
def _inotify() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - probe for the symbol
    except (OSError, AttributeError):
        return None
    return libc


class Doorbell:
    def __init__(
        self, bell_path: str, *, give_back: Callable[[Doorbell], None] | None = None
    ) -> None:
        """give_back: what done() hands it to, to keep it for a later wait (else it closes)."""
        self.path = bell_path
        self._give_back = give_back
        self._fd = -1
        libc = _inotify()
        if libc is None:
            return
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return
        mask = _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_DONT_FOLLOW
        if libc.inotify_add_watch(fd, os.fsencode(bell_path), mask) < 0:
            os.close(fd)
            return
        self._fd = fd

    def clear(self) -> None:
        """Forget rings heard so far: the caller is about to look at the queue itself."""
        if self._fd < 0:
            return
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout_s: float) -> None:
        """Sleep until the bell rings or timeout_s passes."""
        if timeout_s <= 0:
            return
        if self._fd < 0:
            select.select([], [], [], min(timeout_s, _FALLBACK_POLL_S))
            return
        select.select([self._fd], [], [], timeout_s)

    def done(self) -> None:
        if self._give_back is None:
            self.close()
        else:
            self._give_back(self)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
