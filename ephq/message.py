"""What a consumer gets back: the same for every backend."""

from datetime import datetime, timezone
from typing import Any, NamedTuple

# NamedTuples rather than dataclasses: a dataclass costs ~1 ms of start-up to define, and every
# `ephq` command pays start-up. For the same reason this module does not import annotations
# from __future__: typing.NamedTuple compiles each field's annotation given as a string (2.5 ms
# for the classes here), and evaluates one given as a type for nothing.


# The most data one message may carry, in bytes of its JSON text (UTF-8), in every backend.
MAX_MESSAGE_BYTES = 64 << 20


_UTC = timezone.utc


def utc_from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, _UTC)  # (tz= by keyword costs twice the time)


class Message(NamedTuple):
    """One delivery of a message (``receipt`` is None when only peeked at).

    ``attempts`` counts deliveries so far, this one included. ``data_json`` is the data exactly as
    it was enqueued; ``data`` is the same parsed. ``metadata`` holds what the queue knows beyond
    the data: for a dead letter, ``dead`` with the original stream, last error, attempts and time
    of death (and ``dlq_error``, ``dlq_failed_at`` once a dead-letter handler failed on it).
    ``state`` is set by listings that show messages in several states (``ready``, ``delayed``,
    ``inflight``); ``visible_until`` is then when a delayed or leased one is due.
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
    state: str | None = None
    group: str | None = None
    """The message's group, if it was enqueued with one (delivered one at a time, in order)."""


def died_elsewhere(meta: dict[str, Any], stream: str) -> bool:
    """Whether a message's metadata.dead tells of a death in a stream other than this one:
    the message is in a dead-letter stream."""
    dead = meta.get("dead")
    return (
        isinstance(dead, dict) and isinstance(dead.get("stream"), str) and dead["stream"] != stream
    )


def live_metadata(meta: dict[str, Any], stream: str) -> dict[str, Any]:
    """The metadata of a stream's (not a dead letter's) message that is a fact about it now.
    A message that carries its own death in this stream was redriven: that is history, hidden.
    In a dead-letter stream, the death in another stream is what the message is about."""
    if "dead" not in meta or died_elsewhere(meta, stream):
        return meta
    return {key: value for key, value in meta.items() if key != "dead"}


class Lease(NamedTuple):
    """A message in flight: leased by a consumer until ``deadline`` (its lease may be extended).

    ``holder`` is who holds it when a worker does (host, pid, worker, started_at): workers
    announce their leases a few tenths of a second after taking them. ``leased_at`` is when the
    holder leased it; for a lease without a known holder, when it was last leased or extended.
    """

    id: str
    stream: str
    attempts: int
    leased_at: datetime | None
    deadline: datetime
    holder: dict[str, Any] | None
    dlq: bool


class Exported(NamedTuple):
    """One message as `export` writes it and `import` reads it: all a store needs to hold it
    again, in any backend.

    ``state``: ready, delayed, inflight (imported as ready: a lease does not move between
    stores) or dead. ``visible_at_ns``: when a delayed message becomes visible (None
    otherwise). ``data_json``: the data exactly as enqueued.
    """

    id: str
    state: str
    attempts: int
    visible_at_ns: int | None
    metadata: dict[str, Any]
    data_json: str


EXPORT_STATES = ("ready", "delayed", "inflight", "dead")


class StreamStats(NamedTuple):
    stream: str
    ready: int
    delayed: int
    inflight: int
    dlq: int
    oldest_age: float | None
    """Seconds since the oldest ready message was enqueued; None when nothing is ready."""


# A stream's largest message unless configured otherwise (like SQS's), and the bounds of the
# setting: the default keeps a mistaken upload (a log file, a core dump) out of the queue.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
MIN_MAX_MESSAGE_BYTES = 1 << 10


class StreamConfig(NamedTuple):
    max_attempts: int = 5
    visibility: float = 30.0
    """Default lease length in seconds, used when dequeue is given none."""
    max_size: int = DEFAULT_MAX_MESSAGE_BYTES
    """The largest message the stream takes, in bytes of its JSON text."""
    dedup_window: float = 300.0
    """Seconds a deduplication key is remembered after its first enqueue (as SQS FIFO's)."""
    dead_letter_stream: str | None = None
    """Where dead letters go as ordinary messages, instead of the stream's own dead letters."""


class CheckProblem(NamedTuple):
    """One thing check() found wrong; ``repaired`` says whether it was put right."""

    stream: str
    kind: str
    path: str
    detail: str
    repaired: bool = False
