"""Recovery: finish or remove what crashed writers left in a store's tmp/.

What a crash can leave, and what becomes of it once nobody holds its lock:

    <id>.<attempts>.dying   a message being dead-lettered (or, in a dead-letter queue, a dead
                            letter being refiled with its handler's error): promised, so it
                            is finished
    <id>.<attempts>.<token>.leaving
                            a group's head being acked: its group is released, then it goes
    commit-<id>/            a committed batch: promised, so its files are placed
    *.w, batch-<id>/        a message or batch still being written: never acknowledged to
                            anyone, so removed (after TMP_GRACE_NS: a writer locks it just
                            after creating it, and must not lose it in between)
    purge-*                 a purged state directory: its messages deleted, anything else
                            quarantined (sweep.py), a bounded share on each look

Only entries of the kind their name says are touched (a dying file is a regular file, a commit a
real directory); anything else in tmp/ is foreign, left for check to report and set aside.

Runs with every reap (so with dequeue), and from check().
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from . import sweep
from .fsio import NotOurs, listdir, owner_is_gone, try_lock, unlink_quietly
from .names import is_id
from .quarantine import Quarantine

TMP_GRACE_NS = 60 * 1_000_000_000


# Entries of a purged tree that one look deletes, when its sweeper died: a dequeue must not wait
# for a purge's deletions (which can take milliseconds each).
PURGE_SHARE = 256


class Finisher(Protocol):
    """What recovery needs of a store: where its tmp/ is, and how to finish a promise."""

    tmp: str
    quarantine: Quarantine

    @property
    def is_dead_letter_queue(self) -> bool: ...

    def install_batch(self, commit: str) -> None: ...
    def leave(self, fd: int, leaving: str, message_id: str) -> None: ...
    def bury(
        self,
        fd: int,
        dying: str,
        message_id: str,
        attempts: int,
        error: str | None,
        due_ns: int = 0,
        *,
        recovering: bool = False,
    ) -> None: ...


def _kind_fits(name: str, mode: int) -> bool:
    if name.endswith((".dying", ".w", ".leaving")):
        return stat.S_ISREG(mode)
    if name.startswith(("commit-", "batch-")):
        return stat.S_ISDIR(mode)
    return name.startswith("purge-")  # a purged tree, or a link that stood in for one


def leftovers(store: Finisher) -> Iterator[tuple[str, str]]:
    """What crashed writers left in tmp/, as (name, path): only entries nobody holds."""
    now = time.time_ns()  # the real time: a file's ctime is real, whatever the store's clock
    for name in listdir(store.tmp):
        path = os.path.join(store.tmp, name)
        # .dying and commit- were locked before they got these names, so a free lock means
        # the owner is gone; the rest could be caught between creation and locking.
        promised = (
            name.startswith("commit-")
            or dying_fields(name) is not None
            or leaving_id(name) is not None
        )
        scrap = name.endswith(".w") or name.startswith(("batch-", "purge-"))
        if not (promised or scrap):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not _kind_fits(name, st.st_mode):
            continue  # foreign: check reports it
        if scrap and now - st.st_ctime_ns <= TMP_GRACE_NS:
            continue
        if stat.S_ISLNK(st.st_mode) or _owner_is_gone(path):
            yield name, path


def _owner_is_gone(path: str) -> bool:
    try:
        return owner_is_gone(path)
    except NotOurs:
        return False


def clean_tmp(store: Finisher) -> list[str]:
    """Finish what crashed writers had committed to, remove the rest; the names dealt with."""
    handled: list[str] = []
    for name, path in leftovers(store):
        if name.endswith(".dying"):
            if not _finish_dying(store, path, name):
                continue
        elif name.endswith(".leaving"):
            if not _finish_leaving(store, path, name):
                continue
        elif name.startswith("commit-"):
            store.install_batch(path)
        elif name.startswith("purge-"):
            if not sweep.clear(path, store.quarantine, PURGE_SHARE):
                continue
        else:
            _remove_tree_or_file(path)
        handled.append(name)
    return handled


def dying_fields(name: str) -> tuple[str, int] | None:
    """The id and attempts of a dying file's name, `<id>.<attempts>.dying`; None if it is not
    one (then it is foreign, not a crashed dead-lettering)."""
    fields = name.split(".")
    if len(fields) != 3 or fields[2] != "dying" or not is_id(fields[0]):
        return None
    attempts = fields[1]
    if not (attempts.isascii() and attempts.isdigit() and len(attempts) <= 9):
        return None
    return fields[0], int(attempts)


def leaving_id(name: str) -> str | None:
    """The id in a leaving file's name, `<id>.<attempts>.<token>.leaving`; None if it is
    not one."""
    fields = name.split(".")
    if len(fields) != 4 or fields[3] != "leaving" or not is_id(fields[0]):
        return None
    return fields[0]


def _finish_leaving(store: Finisher, path: str, name: str) -> bool:
    message_id = leaving_id(name)
    if message_id is None:
        return False
    if not _finish_locked(path, lambda fd: store.leave(fd, path, message_id)):
        return False
    unlink_quietly(path)
    return True


def _finish_dying(store: Finisher, path: str, name: str) -> bool:
    fields = dying_fields(name)
    if fields is None:
        return False
    # In a dead-letter queue a dying file is a dead letter whose handler failed: refiled as it
    # was (the error is lost, never the message).
    why = "its dead-lettering was interrupted (a crash, or a full disk) and finished later"
    error = None if store.is_dead_letter_queue else why
    return _finish_locked(
        path, lambda fd: store.bury(fd, path, fields[0], fields[1], error, recovering=True)
    )


def _finish_locked(path: str, finish: Callable[[int], None]) -> bool:
    """finish(fd) on the file at path once its lock is ours (its writer is gone); False if
    another holds it, it is gone, or it is not a regular file."""
    try:
        fd = try_lock(path)
    except NotOurs:
        return False
    if fd is None:
        return False
    try:
        if not os.path.exists(path):
            return False
        finish(fd)
        return True
    finally:
        os.close(fd)


def _remove_tree_or_file(path: str) -> None:
    """Remove a leftover; a link is removed itself, never what it points to."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        shutil.rmtree(path, ignore_errors=True)
    else:
        unlink_quietly(path)
