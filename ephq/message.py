"""What a consumer gets back: the same for every backend."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NamedTuple

# NamedTuples rather than dataclasses: a dataclass costs ~1 ms of start-up to define, and every
# `ephq` command pays start-up.


# The most data one message may carry, in bytes of its JSON text (UTF-8), in every backend.
MAX_MESSAGE_BYTES = 64 << 20


def utc_from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


class Message(NamedTuple):
    """One delivery of a message (``receipt`` is None when only peeked at).

    ``attempts`` counts deliveries so far, this one included. ``data_json`` is the data exactly as
    it was enqueued; ``data`` is the same parsed. ``metadata`` holds what the queue knows beyond
    the data: for a dead letter, ``dead`` with the original stream, last error, attempts and time
    of death.
    """

    id: str
    receipt: str | None
    stream: str
    data: Any
    data_json: str
    attempts: int
    enqueued_at: datetime
    visible_until: datetime | None
    metadata: dict[str, Any] = {}  # noqa: RUF012 - never mutated; each Message gets its own


class StreamStats(NamedTuple):
    stream: str
    ready: int
    delayed: int
    inflight: int
    dlq: int
    oldest_age: float | None
    """Seconds since the oldest ready message was enqueued; None when nothing is ready."""


class StreamConfig(NamedTuple):
    max_attempts: int = 5
    visibility: float = 30.0
    """Default lease length in seconds, used when dequeue is given none."""


class CheckProblem(NamedTuple):
    """One thing check() found wrong; ``repaired`` says whether it was put right."""

    stream: str
    kind: str
    path: str
    detail: str
    repaired: bool = False
