"""Counting a store's messages without listing every name: leaf counts kept by the leaf's mtime.

`stats` used to list every leaf: about 0.3 µs a name before any parsing, 1.4 s at a million
messages. A directory's mtime moves whenever a name is added to it or taken out of it, so a leaf
whose mtime has not moved since it was counted holds the same names. Each store keeps what it
counted in `census` beside its state directories:

    {"v": 1, "leaves": {"ready/<prefix>": [mtime_ns, count, first name or null], ...}}

(and "groups/<g>" for a group's waiting messages, counted whole by its directory's mtime)

and `stats` lists only the leaves whose mtime moved (in a deep backlog: the head, where
consumers take, and the tail, where producers add). Directory mtimes come from a coarse clock,
so two changes within one tick can leave the same mtime: a leaf changed in the last
SETTLE_NS is never kept, so a change after keeping always moves the mtime past the kept one.

The file is a cache: written in tmp/ without a flush and renamed over the old one, read with the
same distrust as everything else (not a regular file, too big, or not of this shape: ignored).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .fsio import FILE_MODE, NotOurs, listdir, read_regular, write_all
from .names import new_token
from .tree import Tree

CENSUS = "census"
SETTLE_NS = 1_000_000_000
_MAX_BYTES = 8 << 20
_FORMAT = 1

Counted = tuple[int, str | None]  # how many, and the first name in order


class Census:
    def __init__(self, store_dir: str) -> None:
        self.path = os.path.join(store_dir, CENSUS)
        self._tmp_dir = os.path.join(store_dir, "tmp")

    def count(
        self,
        trees: dict[str, tuple[Tree, re.Pattern[str]]],
        now_ns: int,
        whole: dict[str, tuple[str, Tree, re.Pattern[str]]] | None = None,
    ) -> dict[str, Counted]:
        """For each named tree: its messages (names the pattern matches), and the first.

        A tree in `whole` is counted as one, kept by the mtime of the directory named with it,
        which its owner touches whenever it adds or takes a name (groups.py): many small trees
        with about one name a leaf (a stream's groups) cost a name a leaf otherwise.
        """
        kept = self._load()
        keep: dict[str, list[Any]] = {}
        settled = time.time_ns() - SETTLE_NS  # mtimes are the real clock's, whatever the store's

        def recall(key: str, marker: str, names: Callable[[], Iterable[str]]) -> Counted | None:
            """What names() holds, from the census while marker's mtime is the one kept with
            it; None if marker is gone."""
            try:
                mtime = os.lstat(marker).st_mtime_ns
            except FileNotFoundError:
                return None  # gone as we looked
            entry = kept.get(key)
            if entry is not None and entry[0] == mtime:
                counted: Counted = (entry[1], entry[2])
            else:
                listed = list(names())
                counted = (len(listed), min(listed, default=None))
            if mtime < settled:
                keep[key] = [mtime, *counted]
            return counted

        result: dict[str, Counted] = {}
        for key, (marker, tree, pattern) in (whole or {}).items():
            found = recall(key, marker, functools.partial(_in_tree, tree, pattern, now_ns))
            if found is not None:
                result[key] = found
        for state, (tree, pattern) in trees.items():
            total, first = 0, None
            for leaf in tree.leaves(now_ns):
                found = recall(
                    f"{state}/{leaf.prefix}",
                    leaf.path,
                    functools.partial(_in_leaf, leaf.path, pattern),
                )
                if found is None:
                    continue  # pruned as we looked
                total += found[0]
                if first is None:
                    first = found[1]
            result[state] = (total, first)
        if keep != kept:
            self._save(keep)
        return result

    def _load(self) -> dict[str, list[Any]]:
        try:
            doc = json.loads(read_regular(self.path, _MAX_BYTES)[0])
            leaves = doc["leaves"]
            if doc.get("v") != _FORMAT or not isinstance(leaves, dict):
                return {}
            return {k: v for k, v in leaves.items() if _entry_ok(v)}
        except (OSError, NotOurs, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save(self, leaves: dict[str, list[Any]]) -> None:
        # In tmp/ as a .w file: if this process dies, recovery removes it (recovery.py).
        tmp = os.path.join(self._tmp_dir, f"{CENSUS}.{new_token()}.w")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                write_all(fd, json.dumps({"v": _FORMAT, "leaves": leaves}).encode())
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError:  # a cache: a full disk or a read-only one only means counting again
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _in_tree(tree: Tree, pattern: re.Pattern[str], now_ns: int) -> Iterator[str]:
    return (name for _, name in tree.all_names(now_ns) if pattern.fullmatch(name))


def _in_leaf(path: str, pattern: re.Pattern[str]) -> Iterator[str]:
    return (name for name in listdir(path) if pattern.fullmatch(name))


def _entry_ok(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], int)
        and isinstance(entry[1], int)
        and entry[1] >= 0
        and (entry[2] is None or isinstance(entry[2], str))
    )
