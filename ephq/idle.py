"""What a backend keeps between waits (an inotify watch, a listening connection): each is taken
by one waiter at a time and given back after, and at most a few are kept in all.

A process that waits on one stream keeps one. One that has waited on many streams in turn kept
one per stream before, for good: an inotify instance each (the usual limit is 128 per user, so
other programs of the same user could watch nothing more) or a database connection each (the
server's limit is usually 100). Giving back one more than MOST_KEPT hands back the one unused
longest, for its owner to close.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")

MOST_KEPT = 8


class Kept(Generic[K, T]):
    def __init__(self, most: int = MOST_KEPT) -> None:
        self._most = most
        self._idle: list[tuple[K, T]] = []  # the one unused longest first
        self._lock = threading.Lock()

    def take(self, key: K) -> T | None:
        """One kept for key, now the caller's alone; None if none is."""
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == key:
                    return self._idle.pop(i)[1]
        return None

    def give_back(self, key: K, item: T) -> T | None:
        """Keep item for the next wait on key; the one to close if that makes too many."""
        with self._lock:
            self._idle.append((key, item))
            return self._idle.pop(0)[1] if len(self._idle) > self._most else None

    def all(self) -> list[T]:
        """Everything kept, no longer kept (to close)."""
        with self._lock:
            idle, self._idle = self._idle, []
        return [item for _, item in idle]
