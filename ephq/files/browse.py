"""Reading a store without taking anything: what list, get, peek, stats, leases and export show.

Nothing here moves a file or ends a delivery. What is read is checked as the store reads it
(Store.load): a file that is not the message its name says is skipped, left for check to report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..message import Exported, Lease, Message, utc_from_ns
from .groups import GROUPS, WAITING_NAME, parse_waiting
from .names import (
    ID_LENGTH,
    READY_NAME,
    TIMED_NAME,
    ReadyName,
    TimedName,
    id_time_ns,
    parse_ready,
    parse_timed,
)
from .recovery import clean_tmp

if TYPE_CHECKING:
    from .record import Record
    from .store import Store


def exported(store: Store) -> Iterator[Exported]:
    """Every message of this store, in id order, as export writes them."""
    clean_tmp(store)  # what a crash left promised in tmp/ is placed first: it is a message
    now = store.clock()
    found = list(store.entries(None, now))
    if store.groups is not None:  # waiting in their groups: ready, or delayed, to come
        found += [(w.path, w.id, "waiting") for w in store.groups.all_waiting()]
    found.sort(key=lambda entry: entry[1])
    for path, message_id, state in found:
        if state == "waiting":
            yield from _exported_waiting(store, path, message_id, now)
            continue
        record = store.load(path, message_id, taken=False)
        name = os.path.basename(path)
        parsed = parse_ready(name) if state == "ready" else parse_timed(name)
        if record is None or parsed is None:
            continue  # gone meanwhile, or not a message: check reports it
        due = parsed.at_ns if isinstance(parsed, TimedName) and state == "delayed" else None
        meta = store.live_meta(record.meta)
        yield Exported(
            message_id,
            "dead" if store.graveyard is None else state,
            parsed.attempts,
            due,
            meta,
            record.data_json,
        )


def _exported_waiting(store: Store, path: str, message_id: str, now: int) -> Iterator[Exported]:
    fields = parse_waiting(os.path.basename(path))
    record = store.load(path, message_id, taken=False)
    if fields is None or record is None:
        return
    _, attempts, due = fields
    later = due > now
    yield Exported(
        message_id,
        "delayed" if later else "ready",
        attempts,
        due if later else None,
        record.meta,
        record.data_json,
    )


def listing(store: Store, count: int) -> list[Message]:
    """The first count messages by id (enqueue order), in any state, without taking them."""
    now = store.clock()
    found: list[tuple[str, str, ReadyName | TimedName]] = []
    for state, tree, parse in store.states():
        taken = 0
        for leaf, name in tree.all_names(now):
            parsed = parse(name)
            if parsed is None:
                continue
            found.append((os.path.join(leaf.path, name), state, parsed))
            taken += 1
            if state == "ready" and taken >= count:
                break  # ready/ is in id order; the others are in time order
    found.sort(key=lambda entry: entry[2].id)
    listed: list[Message] = []
    for path, state, parsed in found:
        if len(listed) >= count:
            break
        record = store.load(path, parsed.id, taken=False)
        if record is not None:
            listed.append(_described(store, record, parsed, state))
    return listed


def _described(store: Store, record: Record, parsed: ReadyName | TimedName, state: str) -> Message:
    until = parsed.at_ns if isinstance(parsed, TimedName) else None
    return store.as_message(record, parsed.attempts, None, until)._replace(state=state)


def get(store: Store, message_id: str) -> Message:
    found = store.find(message_id)
    if found is not None:
        path, state = found
        record = store.load(path, message_id, taken=False)
        name = os.path.basename(path)
        parsed = parse_ready(name) if state == "ready" else parse_timed(name)
        if record is not None and parsed is not None:
            return _described(store, record, parsed, state)
    raise store.not_found(message_id)


def peek(store: Store, count: int, max_attempts: int | None) -> list[Message]:
    now = store.clock()
    store.maybe_reap(now, max_attempts)
    found: list[Message] = []
    for leaf, name in store.ready.all_names(now):
        if len(found) >= count:
            break
        ready = parse_ready(name)
        if ready is None:
            continue
        record = store.load(os.path.join(leaf.path, name), ready.id, taken=False)
        if record is None:
            continue
        found.append(store.as_message(record, ready.attempts, None, None))
    return found


def counts(store: Store, now: int) -> tuple[int, int, int, int | None]:
    """Ready, delayed and inflight counts, and the enqueue time of the oldest ready message.

    Counted by names, listing only the leaves that changed since the last count
    (census.py).
    """
    groups = {  # a group's waiting messages count as ready
        f"{GROUPS}/{g}": (path, tree, WAITING_NAME)
        for g, path, tree in (store.groups.waiting_trees() if store.groups else ())
    }
    found = store.census.count(
        {
            "ready": (store.ready, READY_NAME),
            "delayed": (store.delayed, TIMED_NAME),
            "inflight": (store.inflight, TIMED_NAME),
        },
        now,
        whole=groups,
    )
    ready, oldest = 0, None
    for key in ("ready", *groups):
        count, first = found.get(key, (0, None))
        ready += count
        if first is not None:  # a ready name and a waiting one both begin with the id
            enqueued = id_time_ns(first[:ID_LENGTH])
            oldest = enqueued if oldest is None else min(oldest, enqueued)
    return ready, found["delayed"][0], found["inflight"][0], oldest


def leases(store: Store, holders: dict[tuple[str, str], tuple[dict[str, Any], int]]) -> list[Lease]:
    """Every message in flight, by deadline, with its holder when a live worker said so."""
    found: list[Lease] = []
    for leaf, name in store.inflight.all_names(store.clock()):
        lease = parse_timed(name)
        if lease is None or lease.token is None:
            continue
        holder, leased_at = holders.get((lease.id, lease.token), (None, None))
        if leased_at is None:
            try:  # a rename sets the ctime: when it was leased or last extended
                leased_at = os.lstat(os.path.join(leaf.path, name)).st_ctime_ns
            except FileNotFoundError:
                continue  # settled while we looked
        found.append(
            Lease(
                lease.id,
                store.stream,
                lease.attempts,
                utc_from_ns(leased_at),
                utc_from_ns(lease.at_ns),
                holder,
                store.is_dead_letter_queue,
            )
        )
    return found


def next_delayed_ns(store: Store) -> int | None:
    """When the first delayed message (a retry, or a delayed enqueue) becomes visible."""
    for _, name in store.delayed.all_names(store.clock()):
        timed = parse_timed(name)
        if timed is not None:
            return timed.at_ns
    return None
