"""A long-lived Queue's leases, tied to its process's life.

A Queue that keeps leases (the default in Python) announces every lease it takes as a holder
of the stream (the file backend: a flocked file; PostgreSQL: a row believed while its session
lives; see Backend.hold). When the process dies, even by SIGKILL, the kernel drops the lock or
the server ends the session, and the next consumer to look gives the leases back at once instead
of at their deadlines. A hung process that lives keeps them only until their deadlines, as ever.

Announcing is off the hot path: a dequeue or an ack only notes the receipt; a thread publishes
what changed a few times a second (so a lease younger than that may still wait for its
deadline), and forgets leases whose deadlines have passed. A command worker, whose handlers
cost a process start each, also announces each lease at once (announce), before its handler
starts.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from . import forking
from .backend import Holder
from .errors import EphqError
from .ids import DLQ_RECEIPT_PREFIX
from .message import Message

PUBLISH_EVERY_S = 0.1
# Every holder is written at least this often, changed or not: a holder whose announcement was
# lost (PostgreSQL's row, with the connection it was believed by, at a restart) writes it anew
# well inside the grace other consumers give it (postgres/holders.py, RESTART_GRACE_S).
REPUBLISH_EVERY_S = 2.0
# A holder without leases is closed (its file removed, its descriptor freed; the next lease in
# its stream opens it anew) once it has had none this long, or at once while more than
# MAX_IDLE_HOLDERS are open without leases: a process that has leased in a thousand streams
# must not keep a thousand files open (EMFILE at the usual limit of 1,024).
CLOSE_IDLE_AFTER_S = 10.0
MAX_IDLE_HOLDERS = 16

# Opens the holder of (stream, dead) for this process, under a name `ephq leases` shows.
Opener = Callable[[str, bool, str], Holder]


_TOOK, _EXTENDED, _ENDED = 0, 1, 2


class LeaseKeeper:
    def __init__(self, opener: Opener, name: str) -> None:
        self.name = name
        self._open = opener
        # What dequeue, extend and ack saw, in order, for the thread: (what, stream, receipt,
        # when leased or the new deadline). Appending is all they do and the thread takes from
        # the other end (a deque's append and popleft are atomic), so neither takes a lock and
        # nothing appended while the thread applies is lost (a list swapped for a fresh one
        # loses what a caller appends to the old one after the swap).
        self._events: collections.deque[tuple[int, str, str, int]] = collections.deque()
        # (stream, dead) -> receipt -> (leased at ns, deadline ns if extended; else None: the
        # deadline its receipt says)
        self._leases: dict[tuple[str, bool], dict[str, tuple[int, int | None]]] = {}
        self._holders: dict[tuple[str, bool], Holder] = {}
        # Holders that last published no lease -> since when (time.monotonic())
        self._idle_since: dict[tuple[str, bool], float] = {}
        self._changed: set[tuple[str, bool]] = set()
        self._lock = threading.Lock()
        # One publish at a time (the thread's rounds and announce()), so that an older picture
        # of the leases is never written over a newer one.
        self._publishing = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._republish_at = 0.0  # time.monotonic()
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """A forked child keeps its own leases, from none, on a thread of its own (the parent's
        did not come along); the parent's announcements stay the parent's (forking.py)."""
        self._events = collections.deque()
        self._leases = {}
        self._holders = {}  # each lets go of its own (holders.py)
        self._idle_since = {}
        self._changed = set()
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._republish_at = 0.0

    def took(self, stream: str, got: Sequence[Message]) -> None:
        """Leases just taken (this is on every dequeue: it only notes them)."""
        if not got or self._closed:
            return
        now = time.time_ns()
        for message in got:
            self._events.append((_TOOK, stream, message.receipt or "", now))
        if self._thread is None:
            self._start()

    def extended(self, stream: str, receipt: str, deadline: int) -> None:
        if self._listening():
            self._events.append((_EXTENDED, stream, receipt, deadline))

    def ended(self, stream: str, receipts: Iterable[object]) -> None:
        """Deliveries settled (or found lost): no longer this process's. What is not a string
        was never a receipt (the API refused it)."""
        if not self._listening():
            return
        for receipt in receipts:
            if isinstance(receipt, str):
                self._events.append((_ENDED, stream, receipt, 0))

    def announce(self) -> None:
        """Publish what changed now, on the caller's thread, rather than at the thread's next
        round: a worker calls this after each lease, before its handler starts, so that a
        SIGKILL leaves no started handler's lease to its deadline."""
        if self._listening():
            self._publish()

    def _listening(self) -> bool:
        """Whether this process has taken a lease and not closed: else there is nothing to note
        (and nobody would ever apply it: a Queue that only acks others' receipts must not
        collect them)."""
        return self._thread is not None and not self._closed

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="ephq-lease-keeper", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Stop announcing; the announcements go (what this process still holds keeps its
        deadlines, as a clean exit should)."""
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for holder in self._holders.values():
            holder.close()
        self._holders.clear()
        self._idle_since.clear()

    def _run(self) -> None:
        while not self._closed:
            self._publish()
            self._wake.wait(PUBLISH_EVERY_S)

    def _apply(self) -> None:
        """What happened since the last look, in the order it happened (call with the lock)."""
        events = self._events
        for _ in range(len(events)):  # what is there now; later ones wait for the next round
            what, stream, receipt, value = events.popleft()
            key = (stream, receipt.startswith(DLQ_RECEIPT_PREFIX))
            held = self._leases.get(key)
            if what == _TOOK:
                if held is None:
                    held = self._leases[key] = {}
                held[receipt] = (value, None)
            elif held is None or receipt not in held:
                continue
            elif what == _EXTENDED:
                held[receipt] = (held[receipt][0], value)
            else:
                del held[receipt]
            self._changed.add(key)

    def _publish(self) -> None:
        with self._publishing:
            self._publish_changes()

    def _publish_changes(self) -> None:
        now = time.time_ns()
        with self._lock:
            if self._closed:
                return
            self._apply()
            if time.monotonic() >= self._republish_at:
                self._republish_at = time.monotonic() + REPUBLISH_EVERY_S
                self._changed.update(self._holders)
            for key, held in self._leases.items():
                gone = [
                    r
                    for r, (_, deadline) in held.items()
                    if (deadline_of(r) if deadline is None else deadline) <= now
                ]
                for receipt in gone:  # its deadline applies now, announced or not
                    del held[receipt]
                if gone:
                    self._changed.add(key)
            due = {key: self._leases.get(key, {}).copy() for key in self._changed}
            self._changed.clear()
        for key, held in due.items():
            try:
                holder = self._holders.get(key)
                if holder is None:
                    if not held:
                        continue
                    holder = self._holders[key] = self._open(key[0], key[1], self.name)
                holder.publish({receipt: at for receipt, (at, _) in held.items()})
            except (EphqError, OSError):
                with self._lock:  # the store is away: try again at the next round
                    self._changed.add(key)
                continue
            if held:
                self._idle_since.pop(key, None)
            else:
                self._idle_since.setdefault(key, time.monotonic())
        self._close_idle()

    def _close_idle(self) -> None:
        """Close the holders that have held nothing for a while (CLOSE_IDLE_AFTER_S), or all
        of those without leases while there are too many (MAX_IDLE_HOLDERS)."""
        with self._lock:  # streams whose leases all ended before a holder was opened
            for key in [k for k, held in self._leases.items() if not held]:
                if key not in self._holders:
                    del self._leases[key]
        if not self._idle_since:
            return
        crowded = len(self._idle_since) > MAX_IDLE_HOLDERS
        now = time.monotonic()
        for key, since in list(self._idle_since.items()):
            if not crowded and now - since < CLOSE_IDLE_AFTER_S:
                continue
            with self._lock:
                if self._leases.get(key):
                    continue  # leased again since it published: the next round says so
                self._leases.pop(key, None)
                holder = self._holders.pop(key, None)
                del self._idle_since[key]
            if holder is not None:
                try:
                    holder.close()
                except (EphqError, OSError):
                    pass  # what it says is nothing; a reader believes it only while we live


def deadline_of(receipt: str) -> int:
    """When a lease runs out unless extended: the receipt's first field (ids.py), read without
    parsing the rest."""
    start = len(DLQ_RECEIPT_PREFIX) if receipt.startswith(DLQ_RECEIPT_PREFIX) else 0
    return int(receipt[start : start + 16], 16)
