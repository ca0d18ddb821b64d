"""Recovery: finish or remove what crashed writers left in a store's tmp/.

What a crash can leave, and what becomes of it once nobody holds its lock:

    <id>.<attempts>.dying   a message being dead-lettered: promised, so it is dead-lettered
    commit-<id>/            a committed batch: promised, so its files are placed
    *.w, batch-<id>/        a message or batch still being written: never acknowledged to
                            anyone, so removed (after TMP_GRACE_NS: a writer locks it just
                            after creating it, and must not lose it in between)
    purge-*                 a purged state directory: removed

Runs with every reap (so with dequeue), and from check().
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .fsio import listdir, owner_is_gone, try_lock, unlink_quietly

if TYPE_CHECKING:
    from .store import Store

TMP_GRACE_NS = 60 * 1_000_000_000


def leftovers(store: Store) -> Iterator[tuple[str, str]]:
    """What crashed writers left in tmp/, as (name, path): only entries nobody holds."""
    for name in listdir(store.tmp):
        path = os.path.join(store.tmp, name)
        # .dying and commit- were locked before they got these names, so a free lock means
        # the owner is gone; the rest could be caught between creation and locking.
        promised = name.endswith(".dying") or name.startswith("commit-")
        scrap = name.endswith(".w") or name.startswith(("batch-", "purge-"))
        if (promised or (scrap and _older_than_grace(path))) and owner_is_gone(path):
            yield name, path


def clean_tmp(store: Store) -> list[str]:
    """Finish what crashed writers had committed to, remove the rest; the names dealt with."""
    handled: list[str] = []
    for name, path in leftovers(store):
        if name.endswith(".dying"):
            if not _finish_dying(store, path, name):
                continue
        elif name.startswith("commit-"):
            store.install_batch(path)
        else:
            _remove_tree_or_file(path)
        handled.append(name)
    return handled


def _finish_dying(store: Store, path: str, name: str) -> bool:
    message_id, attempts = name.split(".")[:2]
    fd = try_lock(path)
    if fd is None:
        return False
    try:
        if not os.path.exists(path):
            return False
        why = "the process dead-lettering it stopped before it finished"
        store.bury(fd, path, message_id, int(attempts), why)
        return True
    finally:
        os.close(fd)


def _older_than_grace(path: str) -> bool:
    try:
        changed = os.stat(path).st_ctime_ns
    except FileNotFoundError:
        return False
    return time.time_ns() - changed > TMP_GRACE_NS


def _remove_tree_or_file(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        unlink_quietly(path)
