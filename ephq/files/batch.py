"""A batch: many messages committed at once, all or nothing.

    tmp/batch-<first id>.<token>/     staged: each message's file written, the directory locked
        │ one flush of the file system (when durable): every file's bytes stick
        ▼ one rename
    tmp/commit-<first id>.<token>/    committed: promised, so recovery finishes it
        │ install: each file moved into ready/, delayed/, its group or the dead letters,
        ▼ then one more flush, then the directory removed
    (placed)

A batch directory is scrap until it is renamed a commit: nothing in it was promised, and
recovery removes it once nobody holds its lock. In a commit, a file's name says where it goes:
a ready or delayed name, `dlq.<ready name>` for a dead letter (import), or
`grp.<group>.<waiting name>` for a message that joins its group (groups.py).

Store (store.py) holds the transitions; this module is how enqueue_many, import, a redrive
into a group and recovery put a batch on disk.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..message import Exported
from . import fsio
from .fsio import listdir, place, write_all
from .groups import GROUP_NAME, group_of, parse_waiting, waiting_name
from .names import ReadyName, TimedName, id_time_ns, new_token, parse_ready, parse_timed
from .record import encode

if TYPE_CHECKING:
    from .store import Progress, Store

DEAD_PREFIX = "dlq."
GROUP_PREFIX = "grp."


def commit(store: Store, first_id: str, stage: Callable[[str], None]) -> None:
    """stage(batch) writes the files into a new locked batch directory; when durable one flush
    of the file system makes their bytes stick, one rename commits them, and install places
    them (which recovery finishes after a crash)."""
    batch, lock = new_dir(store, first_id)
    try:
        try:
            stage(batch)
            if store.durable:  # every file's bytes, before anything names them as committed
                fsio.sync_file_system(lock)
            committed = committed_name(batch)
            os.rename(batch, committed)
        except BaseException:
            shutil.rmtree(batch, ignore_errors=True)
            raise
        install(store, committed)
    finally:
        os.close(lock)


def new_dir(store: Store, first_id: str) -> tuple[str, int]:
    """A new batch directory in the store's tmp/ and the fd of its flock. Until it is renamed a
    commit (locked already, so recovery never takes it for a writer's that is gone), it is
    scrap to recovery: nothing in it was promised."""
    token = new_token()  # an import's ids are not new: this keeps its names unique
    batch = os.path.join(store.tmp, f"batch-{first_id}.{token}")
    try:
        os.mkdir(batch, 0o700)
    except FileNotFoundError:
        store.create()
        os.mkdir(batch, 0o700)
    lock = os.open(batch, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
    except BaseException:
        os.close(lock)
        raise
    return batch, lock


def committed_name(batch: str) -> str:
    """A batch directory's name once committed: batch-<id>.<token> becomes commit-…."""
    head, name = os.path.split(batch)
    return os.path.join(head, "commit-" + name.removeprefix("batch-"))


def joining_name(group: str, message_id: str, attempts: int, due_ns: int) -> str:
    """The name in a commit of a message that joins its group when the batch is installed."""
    return f"{GROUP_PREFIX}{group_of(group)}.{waiting_name(message_id, attempts, due_ns)}"


def stage_new(
    store: Store,
    batch: str,
    ids: list[str],
    items: list[str],
    now: int,
    delay_ns: int,
    progress: Progress,
    groups: list[str | None] | None = None,
) -> None:
    """Write new messages (enqueue_many) into the batch directory."""
    for n, (message_id, data_json) in enumerate(zip(ids, items, strict=True)):
        key = None if groups is None else groups[n]
        meta = {} if key is None else {"group": key}
        content = encode(message_id, store.stream, id_time_ns(message_id), data_json, meta)
        if key is None:
            _, name = store.arrival(message_id, now, delay_ns)
        else:
            name = joining_name(key, message_id, 0, now + delay_ns if delay_ns > 0 else 0)
        _write(store, os.path.join(batch, name), content)
        if progress is not None:
            progress(1)


def stage_exported(store: Store, batch: str, record: Exported, now: int) -> None:
    """Write an exported message (import) into the batch directory, keeping its id, attempts,
    due time, group and whether it is a dead letter."""
    content = encode(
        record.id, store.stream, id_time_ns(record.id), record.data_json, record.metadata
    )
    due = record.visible_at_ns
    group = record.metadata.get("group")
    if record.state == "dead":
        name = DEAD_PREFIX + str(ReadyName(record.id, record.attempts))
    elif isinstance(group, str) and store.groups is not None:
        later = due if record.state == "delayed" and due is not None and due > now else 0
        name = joining_name(group, record.id, record.attempts, later)
    elif record.state == "delayed" and due is not None and due > now:
        name = str(TimedName(due, record.id, record.attempts))
    else:  # ready, a delay that has passed, or a lease (leases do not move between stores)
        name = str(ReadyName(record.id, record.attempts))
    _write(store, os.path.join(batch, name), content)


def _write(store: Store, path: str, record: bytes) -> None:
    fd, recycled = store.pool.open_new(path)
    try:
        write_all(fd, store.as_kept(record, seal=False), recycled=recycled)
    finally:
        os.close(fd)


def install(store: Store, committed: str) -> None:
    """Move every file of a committed batch into place; also how recovery finishes one.

    When durable, one flush of the file system after the moves makes the commit and every
    placement stick at once (the batch's bytes were flushed before its commit).
    """
    touched: dict[str, str] = {}  # file name -> the path it was moved to
    joining: list[tuple[str, str, str, int, int]] = []
    for name in sorted(listdir(committed)):
        if name.startswith(GROUP_PREFIX) and store.groups is not None:
            g, _, rest = name[len(GROUP_PREFIX) :].partition(".")
            fields = parse_waiting(rest)
            if GROUP_NAME.fullmatch(g) and fields is not None:
                joining.append((g, f"{committed}/{name}", *fields))
            continue
        found = _destination(store, name)
        if found is None:
            continue  # not a file a batch writes: check reports it
        dest, placed_as = found
        # Not durable one by one: the flush below covers every move and new directory.
        if place(f"{committed}/{name}", dest, placed_as, durable_dirs=False, flush=False):
            touched[name] = f"{dest}/{placed_as}"
    if store.durable:
        fd = os.open(store.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fsio.sync_file_system(fd)
        finally:
            os.close(fd)
    # After the flush: each joins its group under the group's lock, flushing as it goes
    # (groups.py); the commit directory, removed only after, is the promise meanwhile.
    if store.groups is not None:
        for g, path, message_id, attempts, due_ns in joining:
            store.groups.place(g, path, message_id, attempts, due_ns)
    try:
        os.rmdir(committed)
    except OSError:  # a concurrent recovery is still at it, or a rename did nothing
        _drop_second_names(committed, touched)


def _destination(store: Store, name: str) -> tuple[str, str] | None:
    """The directory a committed file goes to and its name there; None for a name a batch does
    not write."""
    if name.startswith(DEAD_PREFIX):
        if store.graveyard is None:
            return None
        dead = parse_ready(name[len(DEAD_PREFIX) :])  # an imported dead letter
        if dead is None or dead.token is not None:
            return None
        return store.graveyard.ready.leaf_dir(dead.id), str(dead)
    ready = parse_ready(name)
    if ready is not None and ready.token is None:
        return store.ready.leaf_dir(ready.id), name
    timed = parse_timed(name)
    if timed is None or timed.token is not None:
        return None
    return store.delayed.leaf_dir(f"{timed.at_ns:016x}"), name


def _drop_second_names(committed: str, placed: dict[str, str]) -> None:
    """Unlink the names left in a committed batch that are the same file as the placed ones
    (placed: each name's path after its move).

    After a power loss a batch can be both committed and placed (its directory was not flushed
    after the moves); moving a file onto another name of itself does nothing (rename(2)), so
    those names stay behind and would keep the batch directory from ever being removed.
    """
    for name in listdir(committed):
        placed_at = placed.get(name)
        if placed_at is None:
            continue
        try:
            if os.path.samestat(os.lstat(f"{committed}/{name}"), os.lstat(placed_at)):
                os.unlink(f"{committed}/{name}")
        except FileNotFoundError:
            continue
    try:
        os.rmdir(committed)
    except OSError:
        pass
