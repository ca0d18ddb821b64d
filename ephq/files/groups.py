"""Message groups: a group's messages are delivered one at a time, in enqueue order.

    <stream>/groups/<g>/head        the id of the group's one message out in the stream's
                                    ready/, delayed/ or inflight/ (its head); absent: none
    <stream>/groups/<g>/w/…/<id>.<attempts>.<due>
                                    the group's other messages, waiting, in a tree by id
                                    (due: 16 hex, when a delayed one may be seen; 0 if now)

`g` is 16 hex digits of the group key's SHA-256 (the key itself is in each message's record).
Every change to a group is made under a flock of its directory.

- A message joins its group (place) from a committed batch, whose installer recovery re-runs:
  it becomes the head (head written and flushed first, then the file moved out) when the
  group has none, else it waits.
- When the head leaves (acked, dead-lettered), the group is released while an intent is on
  disk (the store's tmp/*.leaving or *.dying file, which recovery finishes): the next waiting
  message becomes the head, again head first, then the move, flushed; or head is removed.
- A head naming a message still waiting is a promotion a crash cut short: whoever locks the
  group next finishes it.

So at most one message of a group is ever out, and no crash leaves a group stuck: every
half-done step is either finished by recovery or visible to the next lock.
"""

import fcntl
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from .fsio import (
    NotOurs,
    ensure_dir,
    fsync_dir,
    listdir,
    read_regular,
    replace_file,
    unlink_quietly,
)
from .names import is_id, new_token
from .tree import READY_CUTS, Tree

GROUPS = "groups"
HEAD = "head"
WAITING = "w"
GROUP_NAME = re.compile(r"[0-9a-f]{16}", re.ASCII)
WAITING_NAME = re.compile(r"([0-9a-f]{24})\.(\d{1,9})\.([0-9a-f]{16})", re.ASCII)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Moves a complete message file out into the stream (ready/, or delayed/ until due): True if
# it was moved, False if it was gone.
PlaceOut = Callable[[str, str, int, int], bool]


class Waiting(NamedTuple):
    path: str
    id: str
    attempts: int
    due_ns: int


def group_of(key: str) -> str:
    """The directory name of a group key."""
    import hashlib  # here: its OpenSSL binding costs every command's start-up otherwise

    return hashlib.sha256(key.encode()).hexdigest()[:16]


def waiting_name(message_id: str, attempts: int, due_ns: int) -> str:
    return f"{message_id}.{attempts}.{max(due_ns, 0):016x}"


def parse_waiting(name: str) -> tuple[str, int, int] | None:
    match = WAITING_NAME.fullmatch(name)
    if match is None:
        return None
    return match[1], int(match[2]), int(match[3], 16)


class Group:
    """One group's directory, locked by whoever holds this."""

    def __init__(self, path: str, durable: bool, set_aside: Callable[[str, str], None]) -> None:
        self.path = path
        self.durable = durable
        self.waiting = Tree(os.path.join(path, WAITING), READY_CUTS, set_aside)

    def head(self) -> str | None:
        try:
            raw, _ = read_regular(os.path.join(self.path, HEAD), 64)
        except (FileNotFoundError, NotOurs):
            return None
        text = raw.decode("ascii", "replace").strip()
        return text if is_id(text) else None

    def set_head(self, message_id: str) -> None:
        tmp = os.path.join(self.path, f"{HEAD}.{new_token()}.w")
        replace_file(
            tmp, os.path.join(self.path, HEAD), (message_id + "\n").encode(), durable=self.durable
        )

    def clear_head(self) -> None:
        unlink_quietly(os.path.join(self.path, HEAD))
        if self.durable:
            fsync_dir(self.path)

    def first_waiting(self, now: int) -> Waiting | None:
        for leaf in self.waiting.leaves(now):
            found = [(fields, n) for n in listdir(leaf.path) if (fields := parse_waiting(n))]
            if found:
                fields, name = min(found)
                return Waiting(f"{leaf.path}/{name}", *fields)
            self.waiting.prune(leaf, now)
        return None

    def find_waiting(self, message_id: str) -> Waiting | None:
        leaf = self.waiting.leaf_dir(message_id)
        for name in listdir(leaf):
            fields = parse_waiting(name)
            if fields is not None and fields[0] == message_id:
                return Waiting(f"{leaf}/{name}", *fields)
        return None


class Groups:
    """The groups of one stream."""

    def __init__(
        self,
        stream_path: str,
        *,
        durable: bool,
        clock: Callable[[], int],
        set_aside: Callable[[str, str], None],
        place_out: PlaceOut,
    ) -> None:
        self.dir = os.path.join(stream_path, GROUPS)
        self.durable = durable
        self.clock = clock
        self._set_aside = set_aside
        self._place_out = place_out

    @contextmanager
    def locked(self, g: str) -> Iterator[Group]:
        path = os.path.join(self.dir, g)
        for _ in range(5):
            ensure_dir(os.path.join(path, WAITING), durable=self.durable)
            try:
                fd = os.open(path, _DIR_FLAGS)
            except FileNotFoundError:
                continue  # removed as idle between the two: make it again
            except OSError:  # a link or a file where the group belongs
                self._set_aside(path, "is where a group's directory belongs")
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink == 0:
                    continue  # removed as idle while we waited for the lock
                yield Group(path, self.durable, self._set_aside)
                return
            finally:
                os.close(fd)
        raise OSError(f"cannot lock the group directory {path}")

    def place(self, g: str, path: str, message_id: str, attempts: int, due_ns: int) -> None:
        """A complete message file joins its group: out, as its head, or waiting."""
        with self.locked(g) as group:
            head, _ = self._settled(group)
            if head is None:  # none out: the oldest waiting goes first (none, usually)
                first = group.first_waiting(self.clock())
                if first is not None and first.id < message_id:
                    self._promote(group, first)
                    head = first.id
            if head is None or head == message_id:
                group.set_head(message_id)
                self._place_out(path, message_id, attempts, due_ns)
                return
            dest = group.waiting.leaf_dir(message_id)
            name = waiting_name(message_id, attempts, due_ns)
            ensure_dir(dest, durable=self.durable)
            try:
                os.rename(path, f"{dest}/{name}")
            except FileNotFoundError:
                return  # placed already (a recovery re-running a batch)
            if self.durable:
                fsync_dir(dest)
            touch(group.path)

    def release(self, g: str, message_id: str) -> None:
        """The head message_id left the stream (acked or dead-lettered): the next one, if any,
        becomes the head. Idempotent: releasing what is not the head only finishes a cut
        promotion."""
        with self.locked(g) as group:
            head, resumed = self._settled(group)
            if resumed or (head is not None and head != message_id):
                # Not the head; or the head just went out again: a stale name in w/ (a power
                # loss kept both names of its move) delivers it once more, and its next ack
                # releases the group.
                return
            nxt = group.first_waiting(self.clock())
            if nxt is None:
                group.clear_head()
                self._remove_if_idle(group)
                return
            self._promote(group, nxt)

    def _settled(self, group: Group) -> tuple[str | None, bool]:
        """The head, and whether it was just sent out: finishing a promotion a crash cut short
        (head written, its file still waiting)."""
        head = group.head()
        if head is not None:
            cut = group.find_waiting(head)
            if cut is not None:
                self._promote(group, cut)
                return head, True
        return head, False

    def _promote(self, group: Group, nxt: Waiting) -> None:
        group.set_head(nxt.id)
        # Its old name in w/ is not flushed away: after a power loss it may stand beside the
        # new one (two names of one file), and the group delivers it once more, no more.
        self._place_out(nxt.path, nxt.id, nxt.attempts, nxt.due_ns)

    def _remove_if_idle(self, group: Group) -> None:
        """An idle group's directory goes (under its lock: a placer waiting for the lock sees
        it gone and makes it again), so the store does not grow with old groups."""
        for root, dirs, files in os.walk(os.path.join(group.path, WAITING), topdown=False):
            if files:
                return
            for name in dirs:
                try:
                    os.rmdir(os.path.join(root, name))
                except OSError:
                    return
        for name in (WAITING, ""):
            try:
                os.rmdir(os.path.join(group.path, name) if name else group.path)
            except OSError:
                return

    def waiting_trees(self) -> Iterator[tuple[str, str, Tree]]:
        """Each group's name, directory and tree of waiting messages, in name order. The
        directory's mtime moves whenever a message joins the tree or leaves it (see touch)."""
        for g in sorted(listdir(self.dir)):
            path = os.path.join(self.dir, g)
            if GROUP_NAME.fullmatch(g) is None or not _is_dir(path):
                continue
            yield g, path, Tree(os.path.join(path, WAITING), READY_CUTS, self._set_aside)

    def all_waiting(self) -> Iterator[Waiting]:
        """Every waiting message of every group (export, counting, check)."""
        now = self.clock()
        for _, _, tree in self.waiting_trees():
            for leaf, name in tree.all_names(now):
                fields = parse_waiting(name)
                if fields is not None:
                    yield Waiting(f"{leaf.path}/{name}", *fields)


def touch(group_path: str) -> None:
    """Move a group directory's mtime: what counts a group's waiting messages keeps its count
    while the mtime stays (census.py). Leaving happens with a new head, which moves it anyway
    (head is renamed or unlinked in the directory); joining as a waiting message, and anything
    taken out of its tree by the quarantine (touch_group_of), touch it. A crash just before a
    touch leaves the count one behind until the group's next change."""
    try:
        os.utime(group_path)
    except OSError:
        pass  # gone (purged, idle) or not ours to touch: nothing to count there


def touch_group_of(stream_path: str, path: str) -> None:
    """Touch the group of the stream whose directory holds path, if one does."""
    relative = os.path.relpath(path, os.path.join(stream_path, GROUPS))
    g = relative.split(os.sep, 1)[0]
    if not relative.startswith("..") and GROUP_NAME.fullmatch(g) is not None:
        touch(os.path.join(stream_path, GROUPS, g))


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
