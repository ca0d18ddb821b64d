"""The file backend: a home directory holding one directory per stream (stream.py)."""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import forking
from ..backend import Holder, Waiter
from ..errors import BadInput, LeaseLost, NotFound, StorageError
from ..idle import Kept
from ..message import (
    CheckProblem,
    Exported,
    Lease,
    Message,
    StreamConfig,
    StreamStats,
    died_elsewhere,
)
from . import browse
from .fsio import is_real_dir, listdir
from .holders import HolderFile, live_holders
from .names import IdSource, Receipt, is_id, is_stream_name, parse_receipt
from .redrive import check_send_home, redrive_into, send_home
from .store import Clock, MaxAttempts, Progress, Store
from .stream import Stream

if TYPE_CHECKING:
    from .doorbell import Doorbell

NS = 1_000_000_000
# Streams this process keeps the state of (their stores' caches, the pool's notes, the census):
# about 8 KB each. A process that works with many streams in turn (one per tenant, say) kept
# every one for good; past this many, the one made longest ago is dropped, and using it again
# reads its layout anew, as a new process would. Nothing it kept is needed to settle a lease:
# a receipt is found by its name (store.py, _delivery_paths).
MOST_STREAMS = 512


class FileBackend:
    def __init__(self, home: str, *, durable: bool, clock: Clock) -> None:
        self.home = home
        self.durable = durable
        self.clock = clock
        self._ids = IdSource()
        self._streams: dict[str, Stream] = {}
        # Bells between waits (idle.py), and every bell made to be kept (closed with the
        # backend, and in a forked child, whether kept or in a wait just then).
        self._bells: Kept[tuple[str, bool], Doorbell] = Kept()
        self._bells_made: weakref.WeakSet[Doorbell] = weakref.WeakSet()
        self._lock = threading.Lock()
        forking.reset_in_children(self)

    def after_fork(self) -> None:
        """A forked child watches bells with inotify descriptors of its own (closing its copy
        of the parent's takes nothing from the parent), and takes no lock a thread of the
        parent's held (forking.py)."""
        self._close_bells()
        self._bells = Kept()
        self._lock = threading.Lock()
        for stream in self._streams.values():
            stream.main.after_fork()
            stream.dead.after_fork()

    def _stream(self, name: str) -> Stream:
        """The stream, its layout checked the first time this process uses it (stream.py)."""
        stream = self._streams.get(name)
        if stream is None:
            self._check_home()
            with self._lock:
                stream = self._streams.get(name)
                if stream is None:
                    stream = self._new_stream(name)
                    stream.verify()
                    stream.main.dead_letter_stream = functools.partial(
                        self._dead_letter_store, name
                    )
                    self._streams[name] = stream
                    if len(self._streams) > MOST_STREAMS:
                        # The oldest made, not the least used: no bookkeeping on every call,
                        # and a busy stream dropped is made again once per MOST_STREAMS others.
                        del self._streams[next(iter(self._streams))]
        return stream

    def _dead_letter_store(self, name: str) -> Store | None:
        """The store that stream name's dead letters go to as messages, if it names one."""
        target = self._stream(name).config().dead_letter_stream
        if target is None or target == name:
            return None
        owner = self._stream(target)
        if not owner.exists():
            owner.create()
        owner.mark_dead_letter_stream(durable=self.durable)
        return owner.main

    def _new_stream(self, name: str) -> Stream:
        return Stream(self.home, name, durable=self.durable, clock=self.clock, ids=self._ids)

    def _settle(self, stream: str, receipt: str) -> tuple[Stream, Store, Receipt]:
        parsed = parse_receipt(receipt)
        owner = self._stream(stream)
        return owner, owner.store(parsed.dead), parsed

    def enqueue(
        self,
        stream: str,
        items: list[str],
        delay_ns: int,
        progress: Progress = None,
        keys: list[str | None] | None = None,
        groups: list[str | None] | None = None,
    ) -> list[str]:
        owner = self._stream(stream)
        store = owner.main
        if keys is not None:
            if not owner.exists():
                owner.create()
            window_ns = round(owner.config().dedup_window * NS)

            def commit(fresh: list[int]) -> list[str]:
                chosen = [items[i] for i in fresh]
                if progress is not None:
                    progress(len(items) - len(fresh))  # the duplicates are done
                chosen_groups = None if groups is None else [groups[i] for i in fresh]
                return self._store(store, chosen, delay_ns, progress, chosen_groups)

            return owner.keys.enqueue(keys, window_ns, commit)
        return self._store(store, items, delay_ns, progress, groups)

    @staticmethod
    def _store(
        store: Store,
        items: list[str],
        delay_ns: int,
        progress: Progress,
        groups: list[str | None] | None = None,
    ) -> list[str]:
        if groups is not None and any(g is not None for g in groups):
            return store.enqueue_many(items, delay_ns, progress, groups)
        if len(items) == 1:
            ids = [store.enqueue(items[0], delay_ns)]
            if progress is not None:
                progress(1)
            return ids
        return store.enqueue_many(items, delay_ns, progress)

    def dequeue(
        self, stream: str, count: int, visibility_ns: int | None, dead: bool
    ) -> list[Message]:
        owner = self._stream(stream)
        limit: MaxAttempts
        if visibility_ns is not None:  # the settings are looked at only if they can matter
            limit = functools.partial(owner.max_attempts, dead)
        else:
            config = owner.config()  # once: each look is a stat
            visibility_ns = round(config.visibility * NS)
            attempts = None if dead else config.max_attempts
            limit = lambda: attempts  # noqa: E731
        return owner.store(dead).claim(count, visibility_ns, limit)

    def ack(self, stream: str, receipt: str) -> None:
        _, store, parsed = self._settle(stream, receipt)
        with _Explained(self, stream, parsed):
            store.ack(parsed.lease, parsed.name)

    def ack_many(self, stream: str, receipts: list[str]) -> list[str]:
        for receipt in receipts:  # a malformed one: BadInput before anything is acked
            parse_receipt(receipt)
        lost = []
        for receipt in receipts:
            try:
                self.ack(stream, receipt)
            except LeaseLost:
                lost.append(receipt)
        return lost

    def nack(self, stream: str, receipt: str, delay_ns: int, reason: str | None) -> None:
        owner, store, parsed = self._settle(stream, receipt)
        with _Explained(self, stream, parsed):
            store.nack(parsed.lease, delay_ns, reason, owner.max_attempts(parsed.dead))

    def release(self, stream: str, receipt: str) -> None:
        owner, store, parsed = self._settle(stream, receipt)
        with _Explained(self, stream, parsed):
            store.nack(parsed.lease, 0, None, owner.max_attempts(parsed.dead), counts=False)

    def reject(self, stream: str, receipt: str, reason: str) -> None:
        _, store, parsed = self._settle(stream, receipt)
        if parsed.dead:
            raise BadInput("a dead letter cannot be dead-lettered again: ack or nack it")
        with _Explained(self, stream, parsed):
            store.reject(parsed.lease, reason)

    def extend(self, stream: str, receipt: str, visibility_ns: int) -> int:
        _, store, parsed = self._settle(stream, receipt)
        with _Explained(self, stream, parsed):
            return store.extend(parsed.lease, visibility_ns)

    def _explain_lost(self, stream: str, parsed: Receipt) -> None:
        """BadInput naming the stream whose lease the receipt is, when it is another's.

        Only on the way to LeaseLost: one lstat per stream, where the lease is as given.
        """
        name = parsed.name
        for other in self.streams():
            if other == stream:
                continue
            leaf = self._new_stream(other).store(parsed.dead).inflight.leaf_dir(name)
            if os.path.lexists(f"{leaf}/{name}"):
                raise BadInput(f"this receipt is for a message of stream {other!r}, not {stream!r}")

    def validate_receipt(self, receipt: str) -> None:
        parse_receipt(receipt)

    def peek(self, stream: str, count: int, dead: bool) -> list[Message]:
        owner = self._stream(stream)
        return browse.peek(owner.store(dead), count, owner.max_attempts(dead))

    def stats(self, stream: str) -> StreamStats:
        owner = self._existing(stream)
        now = self.clock()
        owner.main.reap(now, owner.max_attempts(False))
        owner.dead.reap(now, None)
        ready, delayed, inflight, oldest = browse.counts(owner.main, now)
        dead = sum(browse.counts(owner.dead, now)[:3])
        age = None if oldest is None else max(0.0, (now - oldest) / NS)
        return StreamStats(stream, ready, delayed, inflight, dead, age)

    def streams(self) -> list[str]:
        """The streams in the home: real directories (never links) with a stream's tmp/."""
        return [
            name
            for name, is_dir in self._stream_names()
            if is_dir and is_real_dir(os.path.join(self.home, name, "tmp"))
        ]

    def _in_the_way(self) -> list[str]:
        """Names of the home that a stream could have but that are not directories."""
        return [name for name, is_dir in self._stream_names() if not is_dir]

    def _check_home(self) -> None:
        """StorageError if the home is there but is not a directory (a link to one is fine),
        or is not there and cannot be made: what is nearest it on its path is not a directory
        (without this, `stats` listed no streams there and `enqueue` blamed a stream)."""
        try:
            if os.path.isdir(self.home):
                return
            if os.path.lexists(self.home):
                if os.path.isdir(self.home):
                    return  # another process made it since the first look
                raise StorageError(
                    f"the ephq home {self.home} (from --home or EPHQ_HOME) is not a directory"
                )
            above = os.path.dirname(os.path.abspath(self.home))
            while not os.path.lexists(above):
                above = os.path.dirname(above)
            if not os.path.isdir(above):
                raise StorageError(
                    f"the ephq home {self.home} (from --home or EPHQ_HOME) cannot be made: "
                    f"{above} is not a directory"
                )
        except OSError:
            return  # unreadable, say: the operation itself reports it

    def _stream_names(self) -> list[tuple[str, bool]]:
        """Every entry of the home named as a stream, and whether it is a real directory."""
        self._check_home()
        found = []
        for name in sorted(listdir(self.home)):
            if not is_stream_name(name):
                continue
            found.append((name, is_real_dir(os.path.join(self.home, name)) is True))
        return found

    def purge(self, stream: str) -> int:
        owner = self._existing(stream)  # `purge emial-queue` must not say it emptied it
        if not owner.exists():
            return 0  # a directory only: nothing was ever stored
        with owner.exclusive():
            return owner.main.purge()

    def config(self, stream: str) -> StreamConfig:
        return self._stream(stream).config()

    def configure(self, stream: str, changes: dict[str, Any]) -> StreamConfig:
        owner = self._stream(stream)
        with owner.exclusive():
            new = owner.config()._replace(**changes)
            owner.config_file.save(new, durable=self.durable)
            return new

    def _existing(self, name: str) -> Stream:
        """The stream, or NotFound naming the streams there are: a typo must not pass as an
        empty stream."""
        owner = self._stream(name)
        if is_real_dir(owner.path) is not True:
            known = ", ".join(self.streams()[:10]) or "none yet"
            raise NotFound(f"no stream {name!r} in {self.home} (streams: {known})")
        return owner

    def dead_letters(self, stream: str, count: int) -> list[Message]:
        owner = self._existing(stream)
        owner.dead.maybe_reap(self.clock(), None)
        return browse.listing(owner.dead, count)

    def dead_letter(self, stream: str, message_id: str) -> Message:
        _require_id(message_id)
        return browse.get(self._stream(stream).dead, message_id)

    def redrive(self, stream: str, ids: list[str] | None, progress: Progress = None) -> list[str]:
        for message_id in ids or []:
            _require_id(message_id)
        owner = self._stream(stream)
        if ids is None:
            # A dead letter of this stream that first died in another one goes there too.
            moved = redrive_into(owner.dead, owner.main, None, progress)
            if owner.receives_dead_letters():  # else none of its messages died elsewhere
                moved += send_home(owner.main, self._home_of, None, progress)
            return list(dict.fromkeys(moved))
        ids = list(dict.fromkeys(ids))  # an id given twice is one redrive
        dead = [i for i in ids if owner.dead.find(i) is not None]
        others = [i for i in ids if i not in set(dead)]
        if others:  # refused before anything moves: all or nothing, as on PostgreSQL
            check_send_home(owner.main, others)
        moved = redrive_into(owner.dead, owner.main, dead, progress) if dead else []
        if others:
            moved += send_home(owner.main, self._home_of, others, progress)
        return moved

    def _home_of(self, stream: str) -> Store:
        """The store a dead-letter stream's message goes back to (made if need be)."""
        owner = self._stream(stream)
        if not owner.exists():
            owner.create()
        return owner.main

    def purge_dead_letters(self, stream: str, ids: list[str] | None) -> list[str]:
        for message_id in ids or []:
            _require_id(message_id)
        dead = self._existing(stream).dead  # (a typo must not pass for dead letters gone)
        if ids is not None:
            ids = list(dict.fromkeys(ids))  # an id given twice is one purge
            for message_id in ids:  # all there before any goes, as on PostgreSQL
                if dead.find(message_id) is None:
                    raise dead.not_found(message_id)
        return dead.remove(ids)

    def export(self, stream: str) -> Iterator[Exported]:
        owner = self._existing(stream)
        yield from browse.exported(owner.main)
        yield from browse.exported(owner.dead)

    def import_messages(self, stream: str, records: list[Exported]) -> int:
        owner = self._stream(stream)
        with owner.exclusive():  # two imports of one file at once: one wins, one is refused
            if any(r.state != "dead" and died_elsewhere(r.metadata, stream) for r in records):
                # A dead-letter stream's backlog: its messages can be redriven home from here.
                owner.mark_dead_letter_stream(durable=self.durable)
            return owner.main.import_batch(records)

    def waiter(self, stream: str, dead: bool) -> Waiter:
        from .doorbell import Doorbell  # ctypes costs milliseconds that only waiting needs

        key = (stream, dead)
        bell = self._bells.take(key)
        if bell is not None:
            return bell
        store = self._stream(stream).store(dead)
        if not store.exists():
            # Waiting must not create a stream (a typo would stay in stats for good): a bell
            # that is not there yet is polled, and the next wait watches the real one.
            return Doorbell(store.bell)
        bell = Doorbell(store.bell, give_back=functools.partial(self._keep_bell, key))
        self._bells_made.add(bell)
        return bell

    def _keep_bell(self, key: tuple[str, bool], bell: Doorbell) -> None:
        unused = self._bells.give_back(key, bell)
        if unused is not None:
            unused.close()

    def _close_bells(self) -> None:
        for bell in [*self._bells.all(), *self._bells_made]:
            bell.close()

    def leases(self, stream: str) -> list[Lease]:
        owner = self._existing(stream)
        held = live_holders(owner.path)
        return browse.leases(owner.main, held) + browse.leases(owner.dead, held)

    def hold(self, stream: str, dead: bool, worker: str) -> Holder:
        owner = self._stream(stream)
        owner.create()
        return HolderFile(owner.path, worker, dead, durable=False)

    def next_delayed_ns(self, stream: str, dead: bool) -> int | None:
        return browse.next_delayed_ns(self._stream(stream).store(dead))

    def seconds_until_due(self, stream: str, dead: bool) -> float:
        store = self._stream(stream).store(dead)
        return max(0.0, (store.next_due_ns() - self.clock()) / NS)

    def check(self, stream: str | None, repair: bool) -> list[CheckProblem]:
        from .check import check_stream

        problems: list[CheckProblem] = []
        if stream is not None and not os.path.lexists(self._stream(stream).path):
            self._existing(stream)  # NotFound: a typo must not pass for a stream without fault
        names = [stream] if stream is not None else self.streams() + self._in_the_way()
        for name in names:
            owner = self._new_stream(name)  # not _stream(): check reports what that sets aside
            if repair and owner.exists():
                with owner.exclusive():
                    problems += check_stream(owner, repair=True)
            else:  # nothing to lock: no stream there, or something else in its place
                problems += check_stream(owner, repair=repair)
        return problems

    def close(self) -> None:
        self._close_bells()


class _Explained:
    """Around settling a receipt: a LeaseLost becomes BadInput when the receipt is another
    stream's (FileBackend._explain_lost). A class, not a generator: it wraps every ack."""

    def __init__(self, backend: FileBackend, stream: str, parsed: Receipt) -> None:
        self.backend, self.stream, self.parsed = backend, stream, parsed

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, LeaseLost):
            self.backend._explain_lost(self.stream, self.parsed)


def _require_id(message_id: str) -> None:
    if not isinstance(message_id, str) or not is_id(message_id):
        raise BadInput(f"{message_id!r} is not a message id (24 hex digits, as enqueue prints)")
