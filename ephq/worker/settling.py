"""Settling a message by what its handler did, and counting what became of each.

Outcomes: return -> ack; PermanentFailure -> dead-letter now (a dead letter's is retried: it has
nowhere further to go); Cancelled -> release (the attempt does not count); HandlerBroken ->
release (the worker stops); anything else -> nack with exponential backoff, dead-lettered by
the queue once attempts run out, with the failure as its last error.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from ..errors import LeaseLost
from ..message import Message
from ..queue import Queue
from .outage import GaveUp, Retrying
from .outcomes import Cancelled, HandlerBroken, PermanentFailure


@dataclass
class Outcome:
    message: Message
    result: str  # acked | retry | dead-lettered | released | lease-lost
    seconds: float
    detail: str = ""
    retry_in: float | None = None


@dataclass
class Summary:
    handled: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    lost: int = 0

    def count(self, outcome: Outcome) -> None:
        self.handled += 1
        if outcome.result == "acked":
            self.acked += 1
        elif outcome.result == "retry":
            self.retried += 1
        elif outcome.result == "dead-lettered":
            self.dead_lettered += 1
        elif outcome.result == "released":
            self.released += 1
        else:
            self.lost += 1


@dataclass
class Settling:
    """How a worker settles its messages: its queue and stream (dlq: the stream's dead letters),
    its backoff, and its calls to the store (retried while it is away)."""

    queue: Queue
    stream: str
    dlq: bool
    retry_delay: float
    max_retry_delay: float
    calls: Retrying

    def settle(self, m: Message, start: float, failure: BaseException | None) -> Outcome:
        """Ack, release, dead-letter or retry m by what its handler did (began at start)."""
        receipt = m.receipt or ""
        q, stream = self.queue, self.stream
        try:
            if failure is None:
                self.calls.call("ack a message", functools.partial(q.ack, stream, receipt))
                return Outcome(m, "acked", time.monotonic() - start)
            if isinstance(failure, Cancelled | HandlerBroken):
                return self._release(m, start, str(failure))
            if isinstance(failure, PermanentFailure) and not self.dlq:
                reject = functools.partial(q.reject, stream, receipt, str(failure))
                self.calls.call("dead-letter a message", reject)
                return Outcome(m, "dead-lettered", time.monotonic() - start, str(failure))
            return self._retry(m, start, failure)
        except (LeaseLost, GaveUp) as exc:
            return Outcome(m, "lease-lost", time.monotonic() - start, str(exc))

    def give_back(self, m: Message, start: float) -> Outcome:
        """Release m unrun: it was held ahead when the worker was told to stop."""
        try:
            return self._release(m, start, "the worker is stopping")
        except (LeaseLost, GaveUp) as exc:
            return Outcome(m, "lease-lost", time.monotonic() - start, str(exc))

    def _release(self, m: Message, start: float, why: str) -> Outcome:
        release = functools.partial(self.queue.release, self.stream, m.receipt or "")
        self.calls.call("release a message", release)
        return Outcome(m, "released", time.monotonic() - start, why)

    def _retry(self, m: Message, start: float, exc: BaseException) -> Outcome:
        """Nack with backoff; the queue dead-letters it instead if that was its last attempt."""
        reason = str(exc) or type(exc).__name__
        delay = min(self.retry_delay * 2 ** max(0, self._tries(m) - 1), self.max_retry_delay)
        config = self.calls.call("read settings", functools.partial(self.queue.config, self.stream))
        last = not self.dlq and m.attempts >= config.max_attempts
        nack = functools.partial(
            self.queue.nack, self.stream, m.receipt or "", delay=delay, reason=reason
        )
        self.calls.call("nack a message", nack)
        if last:
            return Outcome(m, "dead-lettered", time.monotonic() - start, reason)
        return Outcome(m, "retry", time.monotonic() - start, reason, retry_in=delay)

    def _tries(self, m: Message) -> int:
        """This message's deliveries to this kind of consumer: a dead letter's attempts go on
        counting from its deliveries in the stream, which its backoff does not pay for."""
        if not self.dlq:
            return m.attempts
        dead = m.metadata.get("dead")
        before = dead.get("attempts") if isinstance(dead, dict) else None
        return m.attempts - before if isinstance(before, int) and before < m.attempts else 1
