"""Tending a worker's leases while their handlers run: each is extended when half of it is left
(a handler may run far longer than `visibility`; a busy machine has time to spare), and the
leases the worker holds are announced, for `ephq leases` and so that a SIGKILLed worker's
announced leases come back at once (the others at their deadlines).

A worker's keeper thread calls tick() every ANNOUNCE_EVERY_S; a worker whose handlers start
apart (commands) also calls announce() as soon as it takes a lease, before the handler starts.
Where the worker's Queue keeps its leases (keeping.py), that Queue announces them, and this
announces nothing of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..backend import Holder
from ..errors import EphqError, LeaseLost, Unavailable
from ..queue import Queue
from .job import Job

# The part of a lease that passes before it is extended.
EXTEND_AFTER = 0.5
# How often the keeper looks at leases to extend and announces the ones the worker holds.
ANNOUNCE_EVERY_S = 0.1


class LeaseTender:
    """jobs: the worker's jobs now (taken under the worker's lock). failed: told what the store
    refused while extending (the worker stops; the leases would run out under handlers)."""

    def __init__(
        self,
        queue: Queue,
        stream: str,
        visibility: float,
        jobs: Callable[[], list[Job]],
        failed: Callable[[Exception], None],
    ) -> None:
        self.queue = queue
        self.stream = stream
        self.visibility = visibility
        self._jobs = jobs
        self._failed = failed
        self._announcer: Holder | None = None
        self._announced: set[str] = set()
        self._announcing = threading.Lock()

    def next_extension(self) -> float:
        """When a lease taken now is extended (time.monotonic())."""
        return time.monotonic() + self.visibility * EXTEND_AFTER

    def pause(self) -> float:
        """Seconds between ticks: often enough for a short visibility."""
        return min(ANNOUNCE_EVERY_S, self.visibility / 20)

    def open(self, *, dlq: bool, worker: str) -> None:
        """Register the worker as a holder of leases; not if its Queue announces them, nor if
        the store is away (what the store refuses is raised)."""
        if self.queue.lease_keeper is not None:
            return
        try:
            self._announcer = self.queue.hold(self.stream, dlq=dlq, worker=worker)
        except Unavailable:
            self._announcer = None

    def close(self) -> None:
        with self._announcing:
            if self._announcer is not None:
                self._announcer.close()
                self._announcer = None

    def tick(self, jobs: list[Job]) -> None:
        """Extend the leases of jobs that are due, then announce what the worker holds."""
        now = time.monotonic()
        for job in jobs:
            if job.extend_at > now or job.lost:
                continue
            try:
                self.queue.extend(self.stream, job.message.receipt or "", self.visibility)
                job.extend_at = self.next_extension()
            except LeaseLost:
                job.lost = True  # settling it will say so
            except Unavailable:
                continue  # the next tick tries again; the lease has half left
            except EphqError as exc:  # refused, not away: the keeper thread must go on
                self._failed(exc)
        self._publish()

    def announce(self) -> None:
        """Announce a lease just taken, before its handler starts: a SIGKILL from now on gives
        it back at once."""
        keeper = self.queue.lease_keeper
        if keeper is not None:
            keeper.announce()
        else:
            self._publish()

    def _publish(self) -> None:
        """Publish the leases the worker holds now, if that changed since the last time. They
        are looked at under the lock: an announcement made on another thread a moment ago with
        fewer leases must not be the last word."""
        with self._announcing:
            if self._announcer is None:
                return
            held = {j.message.receipt or "": j.leased_at_ns for j in self._jobs()}
            if held.keys() == self._announced:
                return
            try:
                self._announcer.publish(held)
                self._announced = set(held)
            except (EphqError, OSError):
                pass  # an announcement is a hint: the next tick says it again
