"""The Queue: ephq's Python API. It validates, converts and waits; a backend stores.

Semantics (the same for every backend):
- At-least-once: a message leaves the queue only when a consumer acks it. Handlers must be
  idempotent.
- FIFO within a stream: visible messages are leased in enqueue order; a message that comes back
  (nack, expired lease) keeps its original place.
- A lease hides a message until ``visible_until``. Its receipt names that one delivery: ack, nack
  and extend with it work until the delivery ends (acked, nacked, dead-lettered, or expired and
  leased by someone else), and raise LeaseLost after.
- Attempts are counted when a message is leased. A message leased ``max_attempts`` times without
  an ack goes to the stream's dead-letter queue instead of being delivered again.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, overload

from .backend import Backend, Holder, Progress
from .durations import NS_PER_SECOND, Duration, to_ns
from .errors import BadInput
from .files.backend import FileBackend
from .files.fsio import translated
from .ids import check_stream_name, is_id
from .jsontext import checked_json, json_of
from .keeping import LeaseKeeper
from .message import (
    EXPORT_STATES,
    MAX_MESSAGE_BYTES,
    MIN_MAX_MESSAGE_BYTES,
    CheckProblem,
    Exported,
    Lease,
    Message,
    StreamConfig,
    StreamStats,
    utc_from_ns,
)


def default_home() -> str:
    """$EPHQ_HOME, else the platform's per-user data directory for ephq."""
    home = os.environ.get("EPHQ_HOME")
    if home:
        return home
    import platformdirs  # only when needed: it costs a few milliseconds of start-up

    return platformdirs.user_data_dir("ephq", appauthor=False)


class Queue:
    """A handle on every stream of one store; cheap to create, safe across threads.

    The store is a home directory (the file backend, the default) or a PostgreSQL database:
    ``home``: where the streams live (default: $EPHQ_HOME, else the user data directory).
    ``url``: a ``postgresql://`` URL (default: $EPHQ_URL when no home is given); needs the
    ``ephq[postgres]`` extra. The semantics are the same on both.
    ``fsync``: flush each enqueue to disk before returning (default). False trades durability
    against power loss for speed; a crashed process still loses nothing. (PostgreSQL follows
    its own settings: synchronous_commit.)
    ``clock``: nanoseconds since the epoch; tests inject one to move time by hand.
    ``keep_leases``: tie this Queue's leases to its process's life (keeping.py): when the
    process dies, even by SIGKILL, what it had leased is delivered again within about a second
    instead of at the leases' deadlines. False for a receipt handed to another process, which
    must outlive this one (the CLI's one-shot commands).
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        fsync: bool = True,
        clock: Callable[[], int] | None = None,
        backend: Backend | None = None,
        keep_leases: bool = True,
    ) -> None:
        self.home: str | None = None
        self.url: str | None = None
        self._fsync = fsync  # (for __reduce__)
        if backend is None:
            if url is None and home is None:
                url = os.environ.get("EPHQ_URL") or None
            if url is not None and home is not None:
                raise BadInput("give a home directory or a database URL, not both")
            if url is not None:
                backend = _database(url, clock or time.time_ns)
                self.url = url
            else:
                path = os.path.abspath(os.fspath(home)) if home is not None else default_home()
                backend = FileBackend(path, durable=fsync, clock=clock or time.time_ns)
                self.home = path
        self._backend = backend
        self._clock = clock or time.time_ns
        self.lease_keeper = (
            LeaseKeeper(backend.hold, os.path.basename(sys.argv[0]) or "python")
            if keep_leases
            else None
        )

    def store_environment(self) -> dict[str, str]:
        """The variable that names this store to another ephq (a worker's handler)."""
        if self.url is not None:
            return {"EPHQ_URL": self.url}
        return {"EPHQ_HOME": self.home} if self.home is not None else {}

    # -- produce ---------------------------------------------------------------------------

    def enqueue(
        self,
        stream: str,
        data: Any,
        delay: Duration = 0,
        *,
        dedup_key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Add a message whose data is any JSON value; returns its id once it is on disk.

        ``dedup_key``: if the stream took this key within its dedup window (default 5 minutes),
        store nothing and return the id of the message that took it, even if that message was
        acked since.
        ``group``: messages of one group are delivered one at a time, in enqueue order: while
        one is leased or waiting for its retry, the next is not delivered.
        """
        return self._enqueue_one(check_stream_name(stream), json_of(data), delay, dedup_key, group)

    def enqueue_json(
        self,
        stream: str,
        text: str | bytes,
        delay: Duration = 0,
        *,
        dedup_key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Add a message given as JSON text; the text is kept exactly as given."""
        return self._enqueue_one(
            check_stream_name(stream), checked_json(text), delay, dedup_key, group
        )

    def _enqueue_one(
        self, stream: str, text: str, delay: Duration, dedup_key: str | None, group: str | None
    ) -> str:
        keys = None if dedup_key is None else [dedup_key]
        groups = None if group is None else [group]
        return self._enqueue(stream, [text], delay, keys=keys, groups=groups)[0]

    def enqueue_many(
        self,
        stream: str,
        items: Iterable[Any],
        delay: Duration = 0,
        *,
        progress: Progress = None,
        dedup_keys: Iterable[str | None] | None = None,
        groups: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Add several messages, all or nothing: a crash midway leaves none of them.

        ``progress``, if given, is called with 1 as each message is written.
        ``dedup_keys``: one key (or None) per item, as enqueue's ``dedup_key``; an item whose
        key an earlier item of the batch has gets that item's id.
        ``groups``: one group (or None) per item, as enqueue's ``group``.
        """
        texts = [json_of(item) for item in items]
        return self._enqueue(check_stream_name(stream), texts, delay, progress, dedup_keys, groups)

    def enqueue_many_json(
        self,
        stream: str,
        texts: Iterable[str | bytes],
        delay: Duration = 0,
        *,
        progress: Progress = None,
        dedup_keys: Iterable[str | None] | None = None,
        groups: Iterable[str | None] | None = None,
    ) -> list[str]:
        checked = [checked_json(t) for t in texts]
        return self._enqueue(
            check_stream_name(stream), checked, delay, progress, dedup_keys, groups
        )

    def _enqueue(
        self,
        stream: str,
        items: list[str],
        delay: Duration,
        progress: Progress = None,
        keys: Iterable[str | None] | None = None,
        groups: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Store already-validated items; every caller has checked the stream's name first."""
        delay_ns = to_ns(delay, "delay")
        checked_keys = None if keys is None else _checked_labels(keys, len(items), "dedup key")
        checked_groups = None if groups is None else _checked_labels(groups, len(items), "group")
        if not items:
            return []
        with translated(f"enqueue to stream {stream!r}"):
            self._check_sizes(stream, items)
            return self._backend.enqueue(
                stream, items, delay_ns, progress, checked_keys, checked_groups
            )

    def _check_sizes(self, stream: str, items: list[str]) -> None:
        """BadInput naming the first item larger than the stream's max_size. A character is at
        most 4 bytes, so only a text that long is measured, and only then are the stream's
        settings read: the usual small message costs nothing here."""
        longest = max(len(item) for item in items)
        if longest <= MIN_MAX_MESSAGE_BYTES // 4:
            return
        limit = self._backend.config(stream).max_size
        for number, item in enumerate(items, 1):
            if len(item) > limit // 4 and (size := len(item.encode())) > limit:
                which = "this message" if len(items) == 1 else f"message {number}"
                raise BadInput(
                    f"{which} is {size:,} bytes of JSON; stream {stream!r} takes at most "
                    f"{limit:,} (ephq config {stream} --max-size)"
                )

    # -- consume ---------------------------------------------------------------------------

    def dequeue(
        self,
        stream: str,
        visibility: Duration | None = None,
        wait: Duration = 0,
        *,
        dlq: bool = False,
    ) -> Message | None:
        """Lease the oldest visible message, or None. ``wait`` long-polls for one to arrive.

        ``visibility``: how long the lease hides it (default: the stream's setting).
        ``dlq``: lease from the stream's dead letters instead.
        """
        got = self.dequeue_many(stream, 1, visibility, wait, dlq=dlq)
        return got[0] if got else None

    def dequeue_many(
        self,
        stream: str,
        max_messages: int,
        visibility: Duration | None = None,
        wait: Duration = 0,
        *,
        dlq: bool = False,
    ) -> list[Message]:
        """Lease up to max_messages, oldest first; waits (up to ``wait``) only while none is."""
        check_stream_name(stream)
        check_count(max_messages, "max_messages")
        visibility_ns = (
            None if visibility is None else to_ns(visibility, "visibility", allow_zero=False)
        )
        no_wait = type(wait) in (int, float) and wait == 0  # the usual call: nothing to check
        wait_s = 0.0 if no_wait else to_ns(wait, "wait") / NS_PER_SECOND
        with translated(f"dequeue from stream {stream!r}"):
            return self._lease(stream, max_messages, visibility_ns, wait_s, dlq)

    def _lease(
        self, stream: str, count: int, visibility_ns: int | None, wait_s: float, dlq: bool
    ) -> list[Message]:
        got = self._lease_now(stream, count, visibility_ns, dlq)
        if got or wait_s <= 0:
            return got
        end = time.monotonic() + wait_s
        bell = self._backend.waiter(stream, dlq)
        try:
            while True:
                bell.clear()  # before looking, so a ring after the look is not lost
                got = self._lease_now(stream, count, visibility_ns, dlq)
                remaining = end - time.monotonic()
                if got or remaining <= 0:
                    return got
                # Wake for the bell, or when a lease or delay may run out, whichever is first.
                due = self._backend.seconds_until_due(stream, dlq)
                bell.wait(min(remaining, max(0.001, due)))
        finally:
            bell.done()

    def _lease_now(
        self, stream: str, count: int, visibility_ns: int | None, dlq: bool
    ) -> list[Message]:
        got = self._backend.dequeue(stream, count, visibility_ns, dlq)
        if self.lease_keeper is not None:
            self.lease_keeper.took(stream, got)
        return got

    def _settled(self, stream: str, receipts: list[str]) -> None:
        if self.lease_keeper is not None:
            self.lease_keeper.ended(stream, receipts)

    def ack(self, stream: str, receipt: str) -> None:
        """The delivery succeeded: remove the message. LeaseLost if the delivery had ended."""
        check_stream_name(stream)
        try:
            with translated(f"ack in stream {stream!r}"):
                self._backend.ack(stream, receipt)
        finally:
            self._settled(stream, [receipt])

    def ack_many(self, stream: str, receipts: Iterable[str]) -> list[str]:
        """Ack several deliveries at once (on PostgreSQL, in one statement); returns the
        receipts whose deliveries had already ended (what ack would raise LeaseLost for)."""
        check_stream_name(stream)
        given = list(receipts)
        if not given:
            return []  # (every backend checks each receipt's form before it acks any)
        try:
            with translated(f"ack in stream {stream!r}"):
                return self._backend.ack_many(stream, given)
        finally:
            self._settled(stream, given)

    def nack(
        self, stream: str, receipt: str, delay: Duration = 0, reason: str | None = None
    ) -> None:
        """The delivery failed: visible again after ``delay`` (in its original place), or
        dead-lettered with ``reason`` if it was the last attempt."""
        check_stream_name(stream)
        delay_ns = to_ns(delay, "delay")
        kept = None if reason is None else _keepable(reason)
        try:
            with translated(f"nack in stream {stream!r}"):
                self._backend.nack(stream, receipt, delay_ns, kept)
        finally:
            self._settled(stream, [receipt])

    def reject(self, stream: str, receipt: str, reason: str) -> None:
        """The message can never succeed: dead-letter it now with ``reason`` as its error."""
        check_stream_name(stream)
        kept = _keepable(reason)
        try:
            with translated(f"reject in stream {stream!r}"):
                self._backend.reject(stream, receipt, kept)
        finally:
            self._settled(stream, [receipt])

    def release(self, stream: str, receipt: str) -> None:
        """Give the message back unprocessed: visible at once, this attempt not counted."""
        check_stream_name(stream)
        try:
            with translated(f"release in stream {stream!r}"):
                self._backend.release(stream, receipt)
        finally:
            self._settled(stream, [receipt])

    def validate_receipt(self, receipt: str) -> None:
        """BadInput unless receipt has the form of a receipt (whether its lease lasts or not)."""
        self._backend.validate_receipt(receipt)

    def extend(self, stream: str, receipt: str, visibility: Duration) -> datetime:
        """Keep the lease for ``visibility`` from now; returns the new visible_until."""
        check_stream_name(stream)
        visibility_ns = to_ns(visibility, "visibility", allow_zero=False)
        with translated(f"extend in stream {stream!r}"):
            deadline = self._backend.extend(stream, receipt, visibility_ns)
        if self.lease_keeper is not None:
            self.lease_keeper.extended(stream, receipt, deadline)
        return utc_from_ns(deadline)

    # -- look and manage -------------------------------------------------------------------

    def peek(self, stream: str, n: int = 10, *, dlq: bool = False) -> list[Message]:
        """The first n visible messages in order, without leasing them."""
        check_stream_name(stream)
        check_count(n, "n")
        with translated(f"peek at stream {stream!r}"):
            return self._backend.peek(stream, n, dlq)

    @overload
    def stats(self, stream: str) -> StreamStats: ...
    @overload
    def stats(self, stream: None = None) -> list[StreamStats]: ...

    def stats(self, stream: str | None = None) -> StreamStats | list[StreamStats]:
        """Counts for one stream (NotFound if there is no such stream), or for every stream
        when none is named."""
        with translated("read queue statistics"):
            if stream is not None:
                return self._backend.stats(check_stream_name(stream))
            return [self._backend.stats(name) for name in self._backend.streams()]

    def leases(self, stream: str) -> list[Lease]:
        """The stream's messages in flight (its dead letters' too), by deadline; NotFound if
        there is no such stream."""
        check_stream_name(stream)
        with translated(f"list the leases of stream {stream!r}"):
            return self._backend.leases(stream)

    def export(self, stream: str) -> Iterator[Exported]:
        """Every message of the stream (ready, delayed, in flight) and its dead letters, in id
        order; NotFound if there is no such stream."""
        check_stream_name(stream)
        with translated(f"export stream {stream!r}"):
            yield from self._backend.export(stream)

    def import_messages(self, stream: str, records: Iterable[Exported]) -> int:
        """Take exported messages into the stream, all or nothing, keeping their ids (so their
        order), attempts, due times and dead letters; a message in flight comes in ready.
        BadInput for an id already in the stream, or given twice. Returns how many."""
        check_stream_name(stream)
        given = list(records)
        seen: set[str] = set()
        for i, record in enumerate(given):
            _check_exported(record)
            if record.metadata:
                given[i] = record._replace(metadata=_keepable_json(record.metadata))
            if record.id in seen:
                raise BadInput(f"message {record.id} is given twice: each id is imported once")
            seen.add(record.id)
        if not given:
            return 0
        with translated(f"import into stream {stream!r}"):
            return self._backend.import_messages(stream, given)

    def hold(self, stream: str, *, dlq: bool = False, worker: str = "python") -> Holder:
        """Announce this process as a holder of leases (Worker does this): publish() the
        receipts it holds, close() when done."""
        check_stream_name(stream)
        with translated(f"register a worker of stream {stream!r}"):
            return self._backend.hold(stream, dlq, worker)

    def next_delayed(self, stream: str, *, dlq: bool = False) -> datetime | None:
        """When the stream's first delayed message (a retry, or a delayed enqueue) becomes
        visible; None if there is none."""
        check_stream_name(stream)
        with translated(f"read stream {stream!r}"):
            due = self._backend.next_delayed_ns(stream, dlq)
        return None if due is None else utc_from_ns(due)

    def streams(self) -> list[str]:
        with translated("list streams"):
            return self._backend.streams()

    def purge(self, stream: str) -> int:
        """Remove every message of the stream (not its dead letters); how many there were."""
        check_stream_name(stream)
        with translated(f"purge stream {stream!r}"):
            return self._backend.purge(stream)

    def config(self, stream: str) -> StreamConfig:
        check_stream_name(stream)
        with translated(f"read the settings of stream {stream!r}"):
            return self._backend.config(stream)

    def configure(
        self,
        stream: str,
        max_attempts: int | None = None,
        visibility: Duration | None = None,
        max_size: int | None = None,
        *,
        dedup_window: Duration | None = None,
        dead_letter_stream: str | None = None,
    ) -> StreamConfig:
        """Change the stream's settings (kept with the stream); returns them all.

        ``max_size``: the largest message the stream takes, in bytes of JSON text (1 KiB to 64
        MiB; default 1 MiB); a larger one is refused with BadInput and nothing is written.
        ``dedup_window``: how long a deduplication key is remembered (default 5 minutes).
        ``dead_letter_stream``: a stream whose ordinary messages this stream's dead letters
        become from now on (with ``metadata.dead``), instead of staying in its own dead-letter
        queue; "" goes back to that. Not the stream itself, nor a stream whose dead letters
        lead back to it.
        """
        check_stream_name(stream)
        changes: dict[str, Any] = {}
        if max_attempts is not None:
            changes["max_attempts"] = check_count(max_attempts, "max_attempts")
        if visibility is not None:
            visibility_ns = to_ns(visibility, "visibility", allow_zero=False)
            changes["visibility"] = visibility_ns / NS_PER_SECOND
        if dedup_window is not None:
            window_ns = to_ns(dedup_window, "dedup_window", allow_zero=False)
            changes["dedup_window"] = window_ns / NS_PER_SECOND
        if max_size is not None and (
            isinstance(max_size, bool)
            or not isinstance(max_size, int)
            or not MIN_MAX_MESSAGE_BYTES <= max_size <= MAX_MESSAGE_BYTES
        ):
            raise BadInput(
                f"max_size must be a whole number of bytes from {MIN_MAX_MESSAGE_BYTES:,} to "
                f"{MAX_MESSAGE_BYTES:,} (64 MiB), not {max_size!r}"
            )
        if max_size is not None:
            changes["max_size"] = max_size
        with translated(f"configure stream {stream!r}"):
            if dead_letter_stream is not None:
                changes["dead_letter_stream"] = self._checked_forward(stream, dead_letter_stream)
            return self._backend.configure(stream, changes)

    def _checked_forward(self, stream: str, target: str) -> str | None:
        """The dead-letter stream to set (None: the stream's own dead letters); BadInput for
        the stream itself or one whose dead letters lead back to it."""
        if not isinstance(target, str):
            raise BadInput(f"dead_letter_stream must be a stream's name, not {target!r}")
        if target == "":
            return None
        check_stream_name(target)
        if target == stream:
            raise BadInput(f"stream {stream!r} cannot be its own dead-letter stream")
        chain = [stream, target]
        after = self._backend.config(target).dead_letter_stream
        while after is not None:
            looped = after in chain
            chain.append(after)
            if looped:
                raise BadInput(f"dead letters would go round in a loop: {' -> '.join(chain)}")
            after = self._backend.config(after).dead_letter_stream
        return target

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, stream: str, n: int = 100) -> list[Message]:
        """The first n dead letters, oldest first, whatever their state (``Message.state``:
        ready; delayed, a dead-letter handler's retry; inflight, leased by one)."""
        check_stream_name(stream)
        check_count(n, "n")
        with translated(f"list the dead letters of stream {stream!r}"):
            return self._backend.dead_letters(stream, n)

    def dead_letter(self, stream: str, message_id: str) -> Message:
        """One dead letter by id; NotFound if there is none."""
        check_stream_name(stream)
        with translated(f"read a dead letter of stream {stream!r}"):
            return self._backend.dead_letter(stream, message_id)

    def redrive(
        self, stream: str, ids: Iterable[str] | None = None, *, progress: Progress = None
    ) -> list[str]:
        """Put dead letters (all, or these ids) back in the stream with fresh attempts.

        They return to their original place in FIFO order. Returns the ids moved.
        """
        check_stream_name(stream)
        with translated(f"redrive dead letters of stream {stream!r}"):
            return self._backend.redrive(stream, None if ids is None else list(ids), progress)

    def purge_dead_letters(self, stream: str, ids: Iterable[str] | None = None) -> list[str]:
        """Delete dead letters (all, or these ids); returns the ids deleted."""
        check_stream_name(stream)
        with translated(f"purge dead letters of stream {stream!r}"):
            return self._backend.purge_dead_letters(stream, None if ids is None else list(ids))

    # -- upkeep ----------------------------------------------------------------------------

    def check(self, stream: str | None = None, *, repair: bool = False) -> list[CheckProblem]:
        """Verify the store (every stream when none is named); with repair, fix what it can."""
        if stream is not None:
            check_stream_name(stream)
        with translated("check the queue"):
            return self._backend.check(stream, repair)

    def close(self) -> None:
        if self.lease_keeper is not None:
            self.lease_keeper.close()
        self._backend.close()

    def __reduce__(self) -> tuple[Callable[..., Queue], tuple[dict[str, Any]]]:
        """A Queue sent to another process (multiprocessing's 'spawn' and 'forkserver', a
        pickle) is made there anew on the same store, with the same options: its connections,
        threads and leases are that process's own."""
        if (self.home is None and self.url is None) or self._clock is not time.time_ns:
            raise TypeError(
                "a Queue made with a backend or a clock of its own cannot be sent to another "
                "process: make one there"
            )
        where = {"url": self.url} if self.url is not None else {"home": self.home}
        options = {"fsync": self._fsync, "keep_leases": self.lease_keeper is not None}
        return _remade, (where | options,)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# The longest deduplication key, in bytes of UTF-8 (SQS allows 128 characters).
MAX_DEDUP_KEY_BYTES = 512


def _checked_labels(keys: Iterable[str | None], count: int, what: str) -> list[str | None]:
    """The keys (dedup keys or groups), one per item, each None or a non-empty text of at most
    512 bytes."""
    given = list(keys)
    if len(given) != count:
        argument, noun = ("dedup_keys", "keys") if what == "dedup key" else ("groups", "groups")
        raise BadInput(f"{argument} has {len(given)} {noun} for {count} messages: give one each")
    for key in given:
        if key is None:
            continue
        if not isinstance(key, str):
            raise BadInput(f"a {what} must be text, not {type(key).__name__}")
        if not key or len(key.encode(errors="replace")) > MAX_DEDUP_KEY_BYTES or "\x00" in key:
            raise BadInput(
                f"{what} {key[:40]!r} must be 1 to {MAX_DEDUP_KEY_BYTES} bytes of text without NUL"
            )
        try:
            key.encode()
        except UnicodeEncodeError:
            raise BadInput(f"{what} {key[:40]!r} is not valid Unicode text") from None
    return given


def _keepable(reason: object) -> str:
    """A failure's reason as every store keeps it: text, with what some cannot hold (NUL, which
    PostgreSQL's text refuses; a lone surrogate, which is not UTF-8) as U+FFFD. A reason is
    often a handler's stderr, which may hold anything; it must not be what stops a worker, nor
    a dead letter that one backend keeps and the other cannot import."""
    if not isinstance(reason, str):
        raise BadInput(f"reason must be text, not {type(reason).__name__}")
    return _kept_text(reason)


_UNKEEPABLE = re.compile("[\x00\ud800-\udfff]")


def _kept_text(text: str) -> str:
    return _UNKEEPABLE.sub("\ufffd", text)


def _keepable_json(value: Any) -> Any:
    """Metadata (ephq's own: why a message died, its group) with every text in it keepable
    (as _keepable): an export of the file backend, which keeps anything, imports into
    PostgreSQL, whose jsonb refuses both. A walk with a stack of its own, not recursion: the
    metadata may nest as deep as the JSON parser allowed, deeper than Python's frames."""
    found: list[Any] = [None]
    todo: list[tuple[Any, Any, Any]] = [(value, found, 0)]  # (value, its new parent, its key)
    while todo:
        given, parent, key = todo.pop()
        if isinstance(given, str):
            parent[key] = _kept_text(given)
        elif isinstance(given, dict):
            mapping: dict[Any, Any] = {}
            parent[key] = mapping
            for name, item in given.items():
                kept = _kept_text(name) if isinstance(name, str) else name
                mapping[kept] = None  # here, so that the keys keep their order
                todo.append((item, mapping, kept))
        elif isinstance(given, list):
            parent[key] = items = [None] * len(given)
            todo.extend((item, items, index) for index, item in enumerate(given))
        else:
            parent[key] = given
    return found[0]


def check_count(value: object, what: str) -> int:
    """value itself if it is a whole number of at least 1 (not a bool); else BadInput."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"{what} must be a whole number of at least 1, not {value!r}")
    return value


def _check_exported(record: Exported) -> None:
    if not isinstance(record, Exported):
        raise BadInput(f"import takes Exported records, not {type(record).__name__}")
    if not is_id(record.id):
        raise BadInput(f"{record.id!r} is not a message id (24 hex digits)")
    if record.state not in EXPORT_STATES:
        raise BadInput(f"message {record.id}: state must be one of {', '.join(EXPORT_STATES)}")
    if isinstance(record.attempts, bool) or not isinstance(record.attempts, int):
        raise BadInput(f"message {record.id}: attempts must be a whole number")
    if not 0 <= record.attempts <= 999_999_999:
        raise BadInput(f"message {record.id}: attempts must be from 0 to 999999999")
    if record.visible_at_ns is not None and (
        isinstance(record.visible_at_ns, bool)
        or not isinstance(record.visible_at_ns, int)
        or not 0 <= record.visible_at_ns < 1 << 63
    ):
        raise BadInput(f"message {record.id}: visible_at must be a time")
    if not isinstance(record.metadata, dict):
        raise BadInput(f"message {record.id}: metadata must be a JSON object")
    checked_json(record.data_json)
    if len(record.data_json.encode()) > MAX_MESSAGE_BYTES:
        raise BadInput(f"message {record.id} is over {MAX_MESSAGE_BYTES:,} bytes")


def _remade(options: dict[str, Any]) -> Queue:
    """A Queue sent by pickle (Queue.__reduce__)."""
    return Queue(**options)


def _database(url: str, clock: Callable[[], int]) -> Backend:
    """The backend a URL names: PostgreSQL, imported only now (its driver costs start-up)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        shown = url if "@" not in url else scheme + "://…"
        raise BadInput(f"unsupported store URL {shown!r}: use postgresql://… (or --home DIR)")
    try:
        from .postgres.backend import PostgresBackend
    except ImportError as exc:
        raise BadInput(
            f"a postgresql:// URL needs the PostgreSQL driver ({exc.name} is missing): "
            "pip install 'ephq[postgres]'"
        ) from None
    return PostgresBackend(url, clock=clock)
