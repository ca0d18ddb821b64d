"""Moving messages out of a store with fresh attempts: dead letters redriven into their stream,
and, from a dead-letter stream, messages sent back to the streams they died in.

Each message keeps its id, so it goes back to its place in FIFO order; one with a group rejoins
its group (as a batch of one: batch.py). One held by a consumer is taken from it: its lease ends.
Every move is one rename into the target's ready/, flushed when the target is durable; the
directories it left are flushed afterwards, or a power loss could leave it in both places.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import BadInput
from ..ids import is_stream_name
from . import batch
from .fsio import place
from .names import ReadyName
from .store import Progress, Store


def redrive_into(
    source: Store, target: Store, ids: list[str] | None, progress: Progress = None
) -> list[str]:
    """Move source's messages (all, or those with the given ids) into target's ready/: a
    stream's dead letters back into the stream."""
    return _move_out(source, lambda path, message_id: target, ids, progress)


def send_home(
    source: Store,
    home_of: Callable[[str], Store],
    ids: list[str] | None,
    progress: Progress = None,
) -> list[str]:
    """In a dead-letter stream: move messages that died in another stream (all, or these
    ids) back to it. NotFound for an id that is not here; BadInput for one that did not come
    from another stream."""

    def home(path: str, message_id: str) -> Store | None:
        origin = _home_stream(source, path, message_id, named=ids is not None)
        return None if origin is None else home_of(origin)

    return _move_out(source, home, ids, progress)


def check_send_home(source: Store, ids: list[str]) -> None:
    """What send_home(ids) would refuse, refused before anything moves: NotFound for an id
    that is not here, BadInput for one that did not come from another stream (so that a
    redrive of several is all or nothing, as in PostgreSQL's transaction)."""
    for path, message_id, _ in source.entries(ids, source.clock()):
        _home_stream(source, path, message_id, named=True)


def _home_stream(source: Store, path: str, message_id: str, *, named: bool) -> str | None:
    """The stream the message at path died in, if another; BadInput if it was named and did
    not (None when it is gone meanwhile: there is nothing to move)."""
    record = source.load(path, message_id, taken=False)
    origin = _died_in(None if record is None else record.meta.get("dead"))
    if origin is not None and origin != source.stream:
        return origin
    if named and record is not None:
        raise BadInput(
            f"message {message_id} of stream {source.stream!r} is not a dead letter "
            "of another stream: nothing to redrive it to"
        )
    return None


def _died_in(dead: object) -> str | None:
    """The stream a message's metadata.dead says it died in, if it names one."""
    stream = dead.get("stream") if isinstance(dead, dict) else None
    return stream if is_stream_name(stream) else None


def _move_out(
    source: Store,
    target_of: Callable[[str, str], Store | None],
    ids: list[str] | None,
    progress: Progress,
) -> list[str]:
    """Move messages (all, or these ids) into the ready/ of the store target_of(path, id)
    names (None: it stays), with fresh attempts."""
    moved: list[str] = []
    emptied: set[str] = set()
    woken: dict[str, Store] = {}
    for path, message_id, _ in source.entries(ids, source.clock()):
        target = target_of(path, message_id)
        if target is None:
            continue
        group = _group_in(source, path, message_id, target)
        if group is not None:
            if not _rejoin(target, path, message_id, group):
                continue
        elif place(
            path,
            target.ready.leaf_dir(message_id),
            str(ReadyName(message_id, 0)),
            durable_dirs=target.durable,
            flush=target.durable,
        ):
            woken[target.path] = target
        else:
            continue
        moved.append(message_id)
        emptied.add(os.path.dirname(path))
        if progress is not None:
            progress(1)
    source.flush_dirs(emptied)  # or a power loss could leave a moved message here too
    for target in woken.values():
        target.ring()
        target.forget_head()  # they may come before what this process has cached
    return moved


def _group_in(source: Store, path: str, message_id: str, target: Store) -> str | None:
    """The group a message moving to target joins there, if it has one."""
    if target.groups is None:
        return None
    record = source.load(path, message_id, taken=False)
    group = None if record is None else record.meta.get("group")
    return group if isinstance(group, str) else None


def _rejoin(target: Store, path: str, message_id: str, group: str) -> bool:
    """Take a message file into its group in target, with fresh attempts: moved into a commit
    directory of target's (a promise recovery keeps), then installed as a batch is. False if
    the file was gone.

    The directory is committed (locked, empty) before the file moves in: a batch directory is
    scrap to recovery, and the file must never be in one.
    """
    staging, lock = batch.new_dir(target, message_id)
    try:
        committed = batch.committed_name(staging)
        os.rename(staging, committed)
        name = batch.joining_name(group, message_id, 0, 0)
        try:
            os.rename(path, f"{committed}/{name}")
        except FileNotFoundError:
            os.rmdir(committed)
            return False
        batch.install(target, committed)
        return True
    finally:
        os.close(lock)
