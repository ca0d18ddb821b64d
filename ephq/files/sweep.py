"""Deleting what purge set aside, out of its caller's way.

purge renames a stream's state directories into tmp/purge-<token>-<state>: at that instant the
stream is empty and usable. Deleting the files can take minutes (on a file system mounted with
`discard` each unlink of a written file costs milliseconds), so purge hands the trees to a
sweeper, a detached process (`python -m ephq.files.sweep STREAM_DIR TREE...`), and returns.
When the disk is low on space, where freeing it is the point, purge sweeps before it returns.

A sweeper deletes the message files of a tree and sets aside whatever else is there (a purge
deletes messages, not what a person left in the store); it holds a flock on each tree while it
works. A tree whose sweeper died is finished by recovery, a bounded share on each look
(recovery.py), so that no dequeue waits for a purge's deletions.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from collections.abc import Callable

from .fsio import is_real_dir
from .groups import HEAD, WAITING, parse_waiting
from .names import parse_ready, parse_timed
from .quarantine import Quarantine

_HEX = frozenset("0123456789abcdef")


Parse = Callable[[str], object]


def _parser(tree: str) -> Parse:
    if tree.endswith("groups"):
        return parse_waiting
    if tree.endswith("ready"):
        return parse_ready
    leases = tree.endswith("inflight")  # a lease's name holds its token, a delayed one's none

    def parse(name: str) -> object:
        timed = parse_timed(name)
        return timed if timed is not None and (timed.token is not None) == leases else None

    return parse


def _ours(tree: str, name: str, parse: Parse) -> bool:
    """Whether a file of a purged tree is one ephq wrote there (a group's head and what its
    writer left count too)."""
    if parse(name) is not None:
        return True
    return tree.endswith("groups") and (name == HEAD or name.startswith(f"{HEAD}."))


def _our_dir(tree: str, name: str) -> bool:
    return _HEX.issuperset(name) or (tree.endswith("groups") and name == WAITING)


def count(tree: str) -> int:
    """How many messages a tree set aside by purge holds (by their names: no file is opened)."""
    if not is_real_dir(tree):
        return 0
    parse = _parser(tree)
    found = 0
    for _, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if _our_dir(tree, d)]
        found += sum(1 for name in filenames if parse(name) is not None)
    return found


def clear(tree: str, quarantine: Quarantine, budget: int | None = None) -> bool:
    """Delete the messages of a tree set aside by purge, quarantine the rest; True when the
    tree is gone. With a budget, stop after that many entries (recovery's share)."""
    if not is_real_dir(tree):
        quarantine.take(tree)  # a link or a file that stood in for the directory
        return True
    parse = _parser(tree)
    left = float("inf") if budget is None else budget
    walked: list[str] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        keep = []
        for name in dirnames:
            path = f"{dirpath}/{name}"
            if _our_dir(tree, name) and is_real_dir(path):
                keep.append(name)
            else:
                quarantine.take(path)  # never descended into, never followed: set aside whole
        dirnames[:] = keep
        for name in filenames:
            if left <= 0:
                return False
            left -= 1
            _dispose(f"{dirpath}/{name}", _ours(tree, name, parse), quarantine)
        walked.append(dirpath)
    for path in reversed(walked):  # the deepest first; the tree itself last
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            return False  # something arrived, or another sweeper is at it
    return True


def _dispose(path: str, ours: bool, quarantine: Quarantine) -> None:
    try:
        if ours and stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            quarantine.take(path)
    except FileNotFoundError:
        return  # a concurrent sweeper took it


def spawn(stream_dir: str, trees: list[str]) -> bool:
    """Start a detached sweeper for trees; False if none could be started."""
    if not sys.executable:
        return False
    import subprocess  # here: it costs 4.6 ms of start-up that only a purge needs

    try:
        subprocess.Popen(
            [sys.executable, "-m", "ephq.files.sweep", stream_dir, *trees],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # it outlives `ephq purge`, and the terminal's hangup
        )
    except OSError:
        return False
    return True


def sweep(stream_dir: str, trees: list[str]) -> None:
    quarantine = Quarantine(stream_dir)
    for tree in trees:
        try:
            fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone, or not a directory: recovery and check deal with it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # another sweeper has it
        try:
            clear(tree, quarantine)
        finally:
            os.close(fd)


if __name__ == "__main__":
    sweep(sys.argv[1], sys.argv[2:])
