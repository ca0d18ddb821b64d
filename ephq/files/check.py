"""check: verify a stream's files and optionally repair them.

It verifies what store.py's invariants promise: every message is in exactly one state, every
file under a state directory has a name ephq writes and sits in the leaf its name implies, every
message file parses, and tmp/ holds nothing a crashed writer left behind.
"""

from __future__ import annotations

import functools
import json
import os
from collections import defaultdict
from collections.abc import Callable

from ..message import CheckProblem
from .fsio import place, read_file, unlink_quietly
from .names import is_id, parse_ready, parse_timed
from .record import CorruptRecord, decode
from .recovery import clean_tmp, leftovers
from .store import Store
from .stream import Stream
from .tree import Tree

# Where a message found twice is kept: the copy furthest along its life, then the most attempts.
_RANK = {
    "ready": 0,
    "delayed": 1,
    "inflight": 2,
    "dlq/ready": 3,
    "dlq/delayed": 4,
    "dlq/inflight": 5,
}


class _Walk:
    def __init__(self, stream: Stream, repair: bool) -> None:
        self.stream = stream
        self.repair = repair
        self.problems: list[CheckProblem] = []
        self.places: dict[str, list[tuple[int, int, str]]] = defaultdict(list)

    def report(self, kind: str, path: str, detail: str, fix: Callable[[], object] | None) -> None:
        repaired = False
        if self.repair and fix is not None:
            fix()
            repaired = True
        self.problems.append(CheckProblem(self.stream.name, kind, path, detail, repaired))

    def store(self, store: Store, label: str) -> None:
        for state, tree in (
            ("ready", store.ready),
            ("delayed", store.delayed),
            ("inflight", store.inflight),
        ):
            self.tree(store, f"{label}{state}", tree)
        for name, path in list(leftovers(store)):
            self.report(
                "stale-tmp",
                path,
                f"left in tmp/ by a writer that stopped: {name}",
                functools.partial(clean_tmp, store),
            )

    def tree(self, store: Store, state: str, tree: Tree) -> None:
        for dirpath, _, files in os.walk(tree.root):
            for name in sorted(files):
                self.file(store, state, tree, os.path.join(dirpath, name))

    def file(self, store: Store, state: str, tree: Tree, path: str) -> None:
        name = os.path.basename(path)
        fields = _fields(state, name)
        if fields is None:
            self.report("bad-name", path, f"not a name ephq gives a {state} message", None)
            return
        key, message_id, attempts = fields
        leaf = tree.leaf_dir(key)
        if os.path.dirname(path) != leaf:
            self.report(
                "misplaced",
                path,
                f"belongs in {leaf}",
                lambda: place(path, leaf, name, durable=store.durable),
            )
            path = os.path.join(leaf, name) if self.repair else path
        try:
            record = decode(read_file(path))
        except FileNotFoundError:
            return  # moved on by a consumer while we looked
        except CorruptRecord as exc:
            bury = functools.partial(
                store.dead_letter, path, message_id, attempts, f"unreadable message file: {exc}"
            )
            self.report("unreadable", path, str(exc), None if store.graveyard is None else bury)
            return
        if record.id != message_id:
            self.report("id-mismatch", path, f"the file says its id is {record.id!r}", None)
        self.places[message_id].append((_RANK[state], attempts, path))

    def duplicates(self) -> None:
        for message_id, places in self.places.items():
            if len(places) < 2:
                continue
            keep = max(places)
            for _, _, path in places:
                if path != keep[2]:
                    self.report(
                        "duplicate",
                        path,
                        f"message {message_id} is also at {keep[2]}",
                        functools.partial(unlink_quietly, path),
                    )

    def config(self) -> None:
        path = self.stream.config_file.path
        if not os.path.exists(path):
            return
        try:
            with open(path, "rb") as handle:
                doc = json.load(handle)
            int(doc["max_attempts"])
            float(doc["visibility"])
        except (ValueError, KeyError, TypeError) as exc:
            self.report(
                "bad-config",
                path,
                f"settings do not parse ({exc}); defaults apply",
                lambda: self.stream.config_file.save(
                    self.stream.config(), durable=self.stream.main.durable
                ),
            )


def _fields(state: str, name: str) -> tuple[str, str, int] | None:
    """The tree key, id and attempts in a state's file name; None if it is not such a name."""
    if state.endswith("ready"):
        ready = parse_ready(name)
        return None if ready is None else (ready.id, ready.id, ready.attempts)
    timed = parse_timed(name)
    if timed is None or (timed.token is None) != state.endswith("delayed") or not is_id(timed.id):
        return None
    return f"{timed.at_ns:016x}", timed.id, timed.attempts


def check_stream(stream: Stream, repair: bool) -> list[CheckProblem]:
    walk = _Walk(stream, repair)
    if not stream.exists():
        return []
    walk.store(stream.main, "")
    walk.store(stream.dead, "dlq/")
    walk.duplicates()
    walk.config()
    return walk.problems
