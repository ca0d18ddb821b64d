"""Recovery: finish or remove what crashed writers left in a store's tmp/.

What a crash can leave, and what becomes of it once nobody holds its lock:

    <id>.<attempts>.dying   a message being dead-lettered (or, in a dead-letter queue, a dead
                            letter being refiled with its handler's error): promised, so it
                            is finished
    <id>.<attempts>.<token>.leaving
                            a group's head being acked: its group is released, then it goes
    commit-<id>/            a committed batch: promised, so its files are placed
    <name>.<token>.<crc>.staged
                            a single enqueue written and (when its flush ended) promised:
                            placed under <name> if its bytes (or its sealed record) match the
                            CRC-32; if not, its writer stopped before its flush: scrap
    *.w, batch-<id>/        a message or batch still being written: never acknowledged to
                            anyone, so removed (after TMP_GRACE_NS: a writer locks it just
                            after creating it, and must not lose it in between)
    purge-*                 a purged state directory: its messages deleted, anything else
                            quarantined (sweep.py), a bounded share on each look

Only entries of the kind their name says are touched (a dying file is a regular file, a commit a
real directory); anything else in tmp/ is foreign, left for check to report and set aside.

Runs with every reap (so with dequeue), and from check(); before it, the first time in a
process, the look at pool/ after a boot (pool.py), which places refilled files a power loss left
there.
"""

import os
import re
import shutil
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

from . import sweep
from .fsio import NotOurs, listdir, owner_is_gone, read_regular, try_lock, unlink_quietly
from .names import ReadyName, TimedName, is_id, new_token, parse_ready, parse_timed
from .quarantine import Quarantine
from .record import MAX_RECORD_BYTES, unsealed

TMP_GRACE_NS = 60 * 1_000_000_000
STAGED = ".staged"
_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


# Entries of a purged tree that one look deletes, when its sweeper died: a dequeue must not wait
# for a purge's deletions (which can take milliseconds each).
PURGE_SHARE = 256


class Staged(NamedTuple):
    """What a staged file's name says: where it goes, and the CRC-32 of its bytes."""

    name: ReadyName | TimedName
    crc: int


class Pooled(Protocol):
    def look_after_boot(self) -> bool: ...


class Finisher(Protocol):
    """What recovery needs of a store: where its tmp/ is, and how to finish a promise."""

    tmp: str
    quarantine: Quarantine

    @property
    def pool(self) -> Pooled: ...

    @property
    def is_dead_letter_queue(self) -> bool: ...

    def install_batch(self, commit: str) -> None: ...
    def install_staged(self, fd: int, path: str, staged: Staged) -> bool: ...
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


def parse_staged(name: str) -> Staged | None:
    """`<ready or delayed name>.<token>.<crc32 hex>.staged`; None if name is not one."""
    if not name.endswith(STAGED):
        return None
    fields = name[: -len(STAGED)].rsplit(".", 2)
    if len(fields) != 3 or not _HEX8.fullmatch(fields[1]) or not _HEX8.fullmatch(fields[2]):
        return None
    dest = parse_ready(fields[0]) or parse_timed(fields[0])
    if dest is None or dest.token is not None:
        return None
    return Staged(dest, int(fields[2], 16))


def staged_is_whole(path: str, staged: Staged) -> bool:
    """Whether the file at path holds the bytes its staged name's CRC-32 promises."""
    try:
        raw, _ = read_regular(path, MAX_RECORD_BYTES)
    except (FileNotFoundError, NotOurs):
        return False
    return holds_what_was_staged(raw, staged)


def holds_what_was_staged(raw: bytes, staged: Staged) -> bool:
    """The CRC-32 in a staged name is of the file's bytes; or, for a refilled file (whose name
    is given before its size, so its padding, is known: store.py), of its sealed record."""
    if zlib.crc32(raw) == staged.crc:
        return True
    record = unsealed(raw)
    return record is not None and zlib.crc32(record) == staged.crc


def staged_name(dest: str, content: bytes) -> str:
    return f"{dest}.{new_token()}.{zlib.crc32(content):08x}{STAGED}"


def _kind_fits(name: str, mode: int) -> bool:
    if name.endswith((".dying", ".w", ".leaving", STAGED)):
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
        staged = parse_staged(name)
        promised = (
            name.startswith("commit-")
            or staged is not None
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
        if staged is not None and not staged_is_whole(path, staged):
            scrap = True  # its writer is still writing, or stopped before its flush
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
    """Finish what crashed writers had committed to, remove the rest; the names dealt with.
    First, once a process, what a power loss left in pool/ (pool.py)."""
    store.pool.look_after_boot()
    handled: list[str] = []
    for name, path in leftovers(store):
        if name.endswith(".dying"):
            if not _finish_dying(store, path, name):
                continue
        elif name.endswith(".leaving"):
            if not _finish_leaving(store, path, name):
                continue
        elif name.endswith(STAGED):
            if not _finish_staged(store, path, name):
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


def _finish_staged(store: Finisher, path: str, name: str) -> bool:
    """Place a staged enqueue whose writer is gone, or remove it if its bytes are not whole and
    it is older than the grace (a writer takes its file from the pool before it locks it)."""
    staged = parse_staged(name)
    if staged is None:
        return False

    def finish(fd: int) -> bool:
        if store.install_staged(fd, path, staged):
            return True
        if time.time_ns() - os.fstat(fd).st_ctime_ns <= TMP_GRACE_NS:
            return False
        unlink_quietly(path)
        return True

    return _finish_locked(path, finish)


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


def _finish_locked(path: str, finish: Callable[[int], bool | None]) -> bool:
    """finish(fd) on the file at path once its lock is ours (its writer is gone); False if
    another holds it, it is gone, it is not a regular file, or finish said False."""
    try:
        fd = try_lock(path)
    except NotOurs:
        return False
    if fd is None:
        return False
    try:
        if not os.path.exists(path):
            return False
        return finish(fd) is not False
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
