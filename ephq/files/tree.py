"""A state directory as a small tree keyed by the leading hex field of its file names.

A message named ``0001860a1b2c3d4e...`` lives in ``0001860/a1b/2c/`` for cuts (5, 8, 10): each
level is a longer prefix of the key, so walking the levels in sorted order visits names in key
order, and no directory holds more than a slice of time's worth of names. That is what lets a
fresh process find the head of a million-message queue by listing four small directories instead
of one huge one. Empty directories of past slices are pruned as they are found.

A tree never goes through a link: walks descend only into real directories (a link or a file
where a directory belongs is skipped, for check to report), and before a process first uses a
leaf it checks each directory on the way with lstat, setting aside anything else it finds there,
so a stray link cannot send a message out of the home.
"""

import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .fsio import is_real_dir, listdir, real_subdirs
from .names import TIME_HEX

# Ready: by enqueue time in slices of ~4.9 h / ~4.3 s / ~17 ms, so a leaf holds ~1,000 names at
# 60,000 enqueues a second and the top level ~1,800 entries for a year of backlog.
READY_CUTS = (5, 8, 10)
# Ids stamped in one go (a batch) are spread this far apart so that one leaf never holds more
# than about a thousand of them: a fresh process lists a whole leaf to find the head.
BATCH_SPACING_NS = (1 << 4 * (16 - READY_CUTS[-1])) // 1024
# Delayed and inflight: by due time in slices of ~4.9 h / ~4.3 s.
TIMED_CUTS = (5, 8)
_HEX = frozenset("0123456789abcdef")
# An empty directory is pruned only this long after its slice ended, so a producer placing a
# message stamped a moment ago rarely finds its directory removed under it (it makes it again
# and retries if so: place(), fsio.py).
PRUNE_AFTER_NS = 1_000_000_000
# The ready tree's, shorter: its leaves are 17 ms slices, and a consumer refilling its head
# lists every leaf from the first (messages come back into old slices), so at a second each it
# listed ~60 empty leaves of the last second before the one with messages: ~0.5 ms, once every
# few messages of a consumer keeping up with its producers. 100 ms is still longer than what
# stamping and placing a message takes, its flush included, but on a stalled disk.
READY_PRUNE_AFTER_NS = 100_000_000
# Leaves whose path a process has checked; forgotten wholesale past this many.
_CHECKED_LEAVES = 256

# Told the path of something that is in the way of a directory; moves it aside.
SetAside = Callable[[str, str], None]


class Leaf(NamedTuple):
    path: str
    prefix: str

    def window(self) -> tuple[int, int]:
        """The nanosecond instants [start, end) whose keys fall in this leaf."""
        shift = 4 * (TIME_HEX - len(self.prefix))
        first = int(self.prefix, 16)
        return first << shift, (first + 1) << shift


class Tree:
    def __init__(
        self,
        root: str,
        cuts: tuple[int, ...],
        set_aside: SetAside,
        prune_after_ns: int = PRUNE_AFTER_NS,
    ) -> None:
        self.root = root
        self.cuts = cuts
        self.prune_after_ns = prune_after_ns
        self._set_aside = set_aside
        self._last = ("", root)  # the last key prefix asked for and its leaf: usually the next's
        self._checked: dict[str, str] = {}  # key prefix -> leaf path, checked by this process

    def leaf_dir(self, key: str) -> str:
        """The leaf directory where a name starting with key belongs (it may not exist yet).

        The first time a process asks for a leaf, each directory on its way is checked: a link
        or a file there is set aside, so what the caller puts in or takes out stays in the home.
        """
        prefix = key[: self.cuts[-1]]
        last_prefix, last_dir = self._last
        if prefix == last_prefix:
            return last_dir
        leaf = self._checked.get(prefix)
        if leaf is None:
            leaf = self._check_path(prefix)
        self._last = (prefix, leaf)
        return leaf

    def _check_path(self, prefix: str) -> str:
        if len(self._checked) >= _CHECKED_LEAVES:
            self._checked.clear()
        path = self.root
        start = 0
        checking = True
        for cut in self.cuts:
            path = f"{path}/{prefix[start:cut]}"
            start = cut
            if checking:
                real = is_real_dir(path)
                if real is False:
                    self._set_aside(path, "is where a directory of the store belongs")
                # Absent: whoever needs it creates it, a real directory, and all below it.
                checking = real is True
        self._checked[prefix] = path
        return path

    def leaves(self, now_ns: int) -> Iterator[Leaf]:
        """Existing leaves in key order; empty directories of long-ended slices are pruned."""
        yield from self._walk(self.root, "", 0, now_ns)

    def _walk(self, path: str, prefix: str, level: int, now_ns: int) -> Iterator[Leaf]:
        start = len(prefix)
        width = self.cuts[level] - start
        children = sorted(n for n in real_subdirs(path) if len(n) == width and _HEX.issuperset(n))
        last_level = level == len(self.cuts) - 1
        for child in children:
            child_path = os.path.join(path, child)
            if last_level:
                yield Leaf(child_path, prefix + child)
                continue
            found = False
            for leaf in self._walk(child_path, prefix + child, level + 1, now_ns):
                found = True
                yield leaf
            if not found and self._ended(Leaf(child_path, prefix + child), now_ns):
                self._rmdir(child_path)

    def prune(self, leaf: Leaf, now_ns: int) -> None:
        """Remove an empty leaf whose slice ended a while ago, and then its emptied parents."""
        if not self._ended(leaf, now_ns):
            return
        path = leaf.path
        while path != self.root and self._rmdir(path):
            path = os.path.dirname(path)

    def all_names(self, now_ns: int) -> Iterator[tuple[Leaf, str]]:
        for leaf in self.leaves(now_ns):
            for name in sorted(listdir(leaf.path)):
                yield leaf, name

    def _ended(self, leaf: Leaf, now_ns: int) -> bool:
        """Whether the leaf's slice ended long enough ago to remove it once empty."""
        return leaf.window()[1] + self.prune_after_ns <= now_ns

    @staticmethod
    def _rmdir(path: str) -> bool:
        try:
            os.rmdir(path)
        except OSError:  # not empty (a writer got in first) or already gone
            return False
        return True
