"""check: verify a stream's files and optionally repair them.

It verifies what store.py's invariants promise: every message is in exactly one state, every
entry under the stream is a directory or file of the kind its place calls for and has a name
ephq gives, every message file sits in the leaf its name implies and holds its own message, and
tmp/ holds nothing a crashed writer left behind. It never follows a link and reads no file but
the ones whose names and kinds are ephq's.

Repair moves what is not ephq's into the stream's quarantine (quarantine.py), which check then
lists: kept byte for byte, for a person to look at and delete.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import stat
from collections.abc import Callable

from ..message import CheckProblem
from .config import MAX_CONFIG_BYTES, parse
from .dedup import BUCKET_NAME, KEY_NAME, KEYS, PRUNED, key_path
from .fsio import (
    NotOurs,
    describe_kind,
    listdir,
    place,
    read_regular,
    still_there,
    unlink_quietly,
)
from .groups import GROUP_NAME, GROUPS, HEAD, WAITING, Group, Groups, parse_waiting
from .holders import HOLDER_NAME, HOLDERS, stale_files
from .pool import MAX_KEPT_BYTES, is_boot_mark, is_mark_file, is_slot
from .quarantine import HOME_QUARANTINE, QUARANTINE, Quarantine
from .record import MAX_RECORD_BYTES, CorruptRecord, record_id
from .recovery import STAGED, clean_tmp, dying_fields, leaving_id, leftovers, parse_staged
from .store import Store
from .stream import DEAD_LETTER_MARK, LOCK_FILE, STORE_DIRS, STORE_FILES, Stream
from .tree import Tree
from .vouch import Reading, key_fields

# Where a message found twice is kept: the copy furthest along its life, then the most attempts.
_RANK = {
    "waiting": -1,  # in its group (groups.py)
    "ready": 0,
    "delayed": 1,
    "inflight": 2,
    "dlq/ready": 3,
    "dlq/delayed": 4,
    "dlq/inflight": 5,
}
_HEX = frozenset("0123456789abcdef")


class _Walk:
    def __init__(self, stream: Stream, repair: bool) -> None:
        self.stream = stream
        self.repair = repair
        self.problems: list[CheckProblem] = []
        # The state trees' leaves, listed and read all at once (vouch.py), and the store and
        # tree of each.
        self.reading = Reading()
        self.read_in: list[tuple[Store, Tree]] = []
        # Every message found whole: (state, directory, names, ids), an id None where the file
        # was not vouched for (and was looked at on its own).
        self.found: list[tuple[str, str, list[str], list[str | None]]] = []

    def report(self, kind: str, path: str, detail: str, fix: Callable[[], object] | None) -> None:
        repaired = False
        if self.repair and fix is not None:
            repaired = fix() is not False  # a fix that could not act says False
        self.problems.append(CheckProblem(self.stream.name, kind, path, detail, repaired))

    def foreign(self, path: str, what: str, problem: NotOurs | None = None) -> None:
        """Something that is not ephq's where ephq keeps its files: set it aside on repair."""
        setback = problem or NotOurs(what)
        fix = functools.partial(self.stream.quarantine.set_aside, path, setback)
        self.report("foreign", path, what, fix)

    def unreadable(self, path: str, why: str, problem: NotOurs) -> None:
        """A file named as a message that holds none: set it aside on repair."""
        fix = functools.partial(self.stream.quarantine.set_aside, path, problem)
        self.report("unreadable", path, why, fix)

    # -- the stream's own directories ------------------------------------------------------

    def layout(self, store: Store, extra: dict[str, bool]) -> None:
        """The entries of a store's directory: each known one of its kind, nothing else."""
        known = {sub: True for sub in STORE_DIRS} | dict.fromkeys(STORE_FILES, False) | extra
        for name in sorted(listdir(store.path)):
            path = os.path.join(store.path, name)
            mode = _mode(path)
            if not mode:
                continue  # gone while we looked
            want_dir = known.get(name)
            if want_dir is None:
                if name.startswith("stream.json.") and name.endswith(".tmp"):
                    self.report(  # what a configure killed before 0.2 left (now in tmp/)
                        "stale-tmp",
                        path,
                        "left by a configure that stopped",
                        functools.partial(unlink_quietly, path),
                    )
                    continue
                self.foreign(path, f"{describe_kind(mode)} that is not part of a stream")
            elif want_dir != stat.S_ISDIR(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                expected = "a directory" if want_dir else "a file"
                self.foreign(path, f"{describe_kind(mode)} where ephq keeps {expected}")

    def store(self, store: Store, label: str) -> None:
        for state, tree in (
            ("ready", store.ready),
            ("delayed", store.delayed),
            ("inflight", store.inflight),
        ):
            if stat.S_ISDIR(_mode(tree.root)):
                self.level(store, f"{label}{state}", tree, tree.root, "", 0)
        if stat.S_ISDIR(_mode(store.tmp)):
            self.tmp(store)
        if stat.S_ISDIR(_mode(store.pool.dir)):
            self.pool(store)

    def tmp(self, store: Store) -> None:
        stale = {name for name, _ in leftovers(store)}
        for name in sorted(listdir(store.tmp)):
            path = os.path.join(store.tmp, name)
            if name in stale:
                self.report(
                    "stale-tmp",
                    path,
                    f"left in tmp/ by a writer that stopped: {name}",
                    functools.partial(clean_tmp, store),
                )
            elif (mode := _mode(path)) and not _tmp_name(name, mode):
                self.foreign(path, f"{describe_kind(mode)} that ephq does not write in tmp/")

    def pool(self, store: Store) -> None:
        for name in sorted(listdir(store.pool.dir)):
            path = os.path.join(store.pool.dir, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # a producer took it while we looked
            if is_boot_mark(name) and is_mark_file(st):
                continue
            if not is_slot(name) or not stat.S_ISREG(st.st_mode):
                self.foreign(path, f"{describe_kind(st.st_mode)} that is not a pooled file")
            elif st.st_nlink > 1 or st.st_size > MAX_KEPT_BYTES:
                why = "a pooled file with another name" if st.st_nlink > 1 else "too big to pool"
                self.foreign(path, why, NotOurs(why, shared=st.st_nlink > 1))

    # -- the state trees -------------------------------------------------------------------

    def level(
        self, store: Store, state: str, tree: Tree, path: str, prefix: str, depth: int
    ) -> None:
        if depth == len(tree.cuts):
            self.reading.add((state, prefix, path))  # listed and read with the others
            self.read_in.append((store, tree))
            return
        width = tree.cuts[depth] - len(prefix)
        for name in sorted(listdir(path)):
            child = f"{path}/{name}"
            mode = _mode(child)
            if not mode:
                continue  # pruned by a consumer while we looked
            if stat.S_ISDIR(mode) and len(name) == width and _HEX.issuperset(name):
                self.level(store, state, tree, child, prefix + name, depth + 1)
            else:
                self.foreign(child, f"{describe_kind(mode)} where ephq keeps {state}/ directories")

    def read_leaves(self) -> None:
        """Every leaf, listed and read at once (vouch.py); each entry not vouched for is
        looked at alone."""
        for ((state, prefix, path), listed), (store, tree) in zip(
            self.reading.ids(), self.read_in, strict=True
        ):
            names, ids = listed
            self.found.append((state, path, names, ids))
            for name, found_id in zip(names, ids, strict=True):
                if found_id is not None:
                    continue
                child = f"{path}/{name}"
                mode = _mode(child)
                if mode:  # else moved on by a consumer or producer while we looked
                    self.file(store, state, tree, child, mode, prefix, name)

    def file(
        self, store: Store, state: str, tree: Tree, path: str, mode: int, prefix: str, name: str
    ) -> None:
        """A file in the leaf of tree whose directories spell prefix."""
        fields = key_fields(state, name)
        if fields is None:
            self.foreign(path, f"{describe_kind(mode)} not named as ephq names a {state} message")
            return
        if not stat.S_ISREG(mode):
            self.foreign(path, f"{describe_kind(mode)} named as a message")
            return
        key, message_id, _ = fields
        if not key.startswith(prefix):  # the leaf's directories spell the first cut of keys
            leaf = tree.leaf_dir(key)
            self.report(
                "misplaced",
                path,
                f"belongs in {leaf}",
                lambda: place(path, leaf, name, durable_dirs=store.durable, flush=store.durable),
            )
            path = os.path.join(leaf, name) if self.repair else path
        try:
            raw, st = read_regular(path, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return  # moved on by a consumer while we looked
        except NotOurs as exc:
            self.unreadable(path, str(exc), exc)
            return
        links = st.st_nlink
        try:
            found_id = record_id(raw)
        except CorruptRecord as exc:
            if still_there(path, st):  # else acked (and zeroed) while we read: not a problem
                self.unreadable(path, str(exc), NotOurs(str(exc), shared=links > 1))
            return
        if found_id != message_id:
            if not still_there(path, st):
                return  # recycled for another message while we read
            why = f"the file holds message {found_id}"
            self.report(
                "id-mismatch",
                path,
                why + (" (a stale second name)" if links > 1 else ""),
                functools.partial(
                    self.stream.quarantine.set_aside, path, NotOurs(why, shared=links > 1)
                ),
            )
            return
        self.found.append((state, os.path.dirname(path), [name], [message_id]))

    def duplicates(self) -> None:
        ids = list(itertools.chain.from_iterable(ids for _, _, _, ids in self.found))
        unique = set(ids)  # built in C: a million ids in a tenth of a second
        unique.discard(None)
        if len(unique) == len(ids) - ids.count(None):
            return  # the usual answer: each message once
        counts = collections.Counter(ids)
        twice = {message_id for message_id, n in counts.items() if n > 1 and message_id}
        places: dict[str, list[tuple[int, int, str]]] = {}
        for state, directory, names, found_ids in self.found:
            if twice.isdisjoint(found_ids):
                continue
            for name, message_id in zip(names, found_ids, strict=True):
                if message_id is not None and message_id in twice:
                    place = (_RANK[state], _attempts(state, name), f"{directory}/{name}")
                    places.setdefault(message_id, []).append(place)
        for message_id, found in places.items():
            keep = max(found)
            for _, _, path in found:
                if path != keep[2]:
                    self.report(
                        "duplicate",
                        path,
                        f"message {message_id} is also at {keep[2]}",
                        functools.partial(unlink_quietly, path),
                    )

    def config(self) -> None:
        path = self.stream.config_file.path
        if not stat.S_ISREG(_mode(path)):
            return  # absent (defaults apply), or reported with the stream's entries
        try:
            parse(read_regular(path, MAX_CONFIG_BYTES)[0])
        except (NotOurs, ValueError, KeyError, TypeError) as exc:
            self.report(
                "bad-config",
                path,
                f"settings do not parse ({exc}); defaults apply",
                lambda: self.stream.config_file.save(
                    self.stream.config(), durable=self.stream.main.durable
                ),
            )

    def holders(self) -> None:
        directory = os.path.join(self.stream.path, HOLDERS)
        if not stat.S_ISDIR(_mode(directory)):
            return
        stale = set(stale_files(directory))
        for name in sorted(listdir(directory)):
            path = os.path.join(directory, name)
            mode = _mode(path)
            if not mode:
                continue
            if HOLDER_NAME.fullmatch(name) is None or not stat.S_ISREG(mode):
                self.foreign(path, f"{describe_kind(mode)} that is not a worker's holder file")
            elif path in stale:
                fix = functools.partial(unlink_quietly, path)
                self.report("stale-holder", path, "left by a worker that is gone", fix)

    def keys(self) -> None:
        """Deduplication keys (dedup.py): buckets of key files, and the sweep's stamp."""
        ledger = self.stream.keys
        if not stat.S_ISDIR(_mode(ledger.dir)):
            return
        window_ns = round(self.stream.config().dedup_window * 1_000_000_000)
        sweep_keys = functools.partial(ledger.prune, window_ns)
        for path, record, mode in ledger.entries():
            name = os.path.basename(path)
            if not mode:
                continue
            if os.path.dirname(path) == ledger.dir:
                if name == PRUNED and stat.S_ISREG(mode):
                    continue
                if BUCKET_NAME.fullmatch(name) and stat.S_ISDIR(mode):
                    continue
                self.foreign(path, f"{describe_kind(mode)} that is not a directory of keys")
            elif name.endswith(".w") and stat.S_ISREG(mode):
                self.report("stale-tmp", path, "a key left by a writer that stopped", sweep_keys)
            elif KEY_NAME.fullmatch(name) is None or not stat.S_ISREG(mode):
                self.foreign(path, f"{describe_kind(mode)} that is not a deduplication key")
            elif record is None or key_path(record.key) != (
                os.path.basename(os.path.dirname(path)),
                name,
            ):
                why = "not a deduplication key's record"
                self.unreadable(path, why, NotOurs(why))

    def groups(self) -> None:
        """Message groups (groups.py): each group's head, and its waiting messages, checked
        as messages are; a head naming a message that is nowhere is a stuck group."""
        groups = self.stream.main.groups
        if groups is None or not stat.S_ISDIR(_mode(groups.dir)):
            return
        heads: dict[str, str] = {}
        for g in sorted(listdir(groups.dir)):
            path = os.path.join(groups.dir, g)
            mode = _mode(path)
            if not mode:
                continue
            if GROUP_NAME.fullmatch(g) is None or not stat.S_ISDIR(mode):
                self.foreign(path, f"{describe_kind(mode)} that is not a message group")
                continue
            for name in sorted(listdir(path)):
                child = os.path.join(path, name)
                kind = _mode(child)
                if name == HEAD and stat.S_ISREG(kind):
                    head = Group(path, False, self.stream.main._set_aside_dir).head()
                    if head is not None:
                        heads[g] = head
                elif name == WAITING and stat.S_ISDIR(kind):
                    self.waiting(child)
                elif name.startswith(f"{HEAD}.") and name.endswith(".w") and stat.S_ISREG(kind):
                    fix = functools.partial(_clear_head_tmp, groups, g)
                    self.report("stale-tmp", child, "a group's head, left unwritten", fix)
                elif kind:
                    self.foreign(child, f"{describe_kind(kind)} that is not part of a group")
        live: set[str | None] = set()  # found in the stream itself, not in its dead letters
        if heads:
            for state, _, _, ids in self.found:
                if _RANK[state] <= _RANK["inflight"]:
                    live.update(ids)
        for g, head in heads.items():
            if head not in live:
                fix = functools.partial(groups.release, g, head)
                why = f"its head {head} is nowhere in the stream: the group would wait for ever"
                self.report("stuck-group", os.path.join(groups.dir, g), why, fix)

    def waiting(self, root: str) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in list(dirnames):
                if not _HEX.issuperset(name) or not stat.S_ISDIR(_mode(f"{dirpath}/{name}")):
                    self.foreign(f"{dirpath}/{name}", "an entry where a group keeps messages")
                    dirnames.remove(name)
            for name in sorted(filenames):
                path = f"{dirpath}/{name}"
                fields = parse_waiting(name)
                mode = _mode(path)
                if fields is None or not stat.S_ISREG(mode):
                    self.foreign(path, f"{describe_kind(mode)} not named as a waiting message")
                    continue
                try:
                    raw, st = read_regular(path, MAX_RECORD_BYTES)
                    found_id = record_id(raw)
                except FileNotFoundError:
                    continue
                except NotOurs as exc:
                    self.unreadable(path, str(exc), exc)
                    continue
                except CorruptRecord as exc:
                    self.unreadable(path, str(exc), NotOurs(str(exc), shared=st.st_nlink > 1))
                    continue
                if found_id != fields[0]:
                    why = f"the file holds message {found_id}"
                    self.unreadable(path, why, NotOurs(why, shared=st.st_nlink > 1))
                    continue
                self.found.append(("waiting", dirpath, [name], [fields[0]]))

    def quarantined(self) -> None:
        for name in self.stream.quarantine.entries():
            path = os.path.join(self.stream.quarantine.dir, name)
            detail = "set aside from " + name.split(".", 2)[-1].replace("%", "/")
            self.problems.append(
                CheckProblem(self.stream.name, "quarantined", path, detail, repaired=True)
            )


def _clear_head_tmp(groups: Groups, g: str) -> None:
    """Remove what a writer of a group's head left, under the group's lock."""
    with groups.locked(g) as group:
        for name in listdir(group.path):
            if name.startswith(f"{HEAD}.") and name.endswith(".w"):
                unlink_quietly(os.path.join(group.path, name))


def _mode(path: str) -> int:
    """The file's type and mode, not following a link; 0 if it is gone."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def _tmp_name(name: str, mode: int) -> bool:
    """Whether an entry of tmp/ is one ephq writes there (of its kind)."""
    if name.endswith(".dying"):
        return stat.S_ISREG(mode) and dying_fields(name) is not None
    if name.endswith(".leaving"):
        return stat.S_ISREG(mode) and leaving_id(name) is not None
    if name.endswith(".w"):
        return stat.S_ISREG(mode)
    if name.endswith(STAGED):
        return stat.S_ISREG(mode) and parse_staged(name) is not None
    if name.startswith(("batch-", "commit-", "purge-")):
        return stat.S_ISDIR(mode) or (name.startswith("purge-") and stat.S_ISLNK(mode))
    return False


def _attempts(state: str, name: str) -> int:
    """The attempts a found message's name gives (its name was parsed when it was read)."""
    if state == "waiting":
        waiting = parse_waiting(name)
        return 0 if waiting is None else waiting[1]
    fields = key_fields(state, name)
    return 0 if fields is None else fields[2]


def check_stream(stream: Stream, repair: bool) -> list[CheckProblem]:
    walk = _Walk(stream, repair)
    kind = stream.foreign_self()
    if kind is not None:
        home = Quarantine(os.path.dirname(stream.path), HOME_QUARANTINE)
        walk.report(
            "foreign",
            stream.path,
            f"{kind} where the stream's directory belongs",
            functools.partial(home.take, stream.path),
        )
        return walk.problems
    if not stream.exists():
        return []
    walk.layout(
        stream.main,
        {
            "dlq": True,
            QUARANTINE: True,
            HOLDERS: True,
            KEYS: True,
            GROUPS: True,
            "stream.json": False,
            LOCK_FILE: False,
            DEAD_LETTER_MARK: False,
        },
    )
    if stat.S_ISDIR(_mode(stream.dead.path)):
        walk.layout(stream.dead, {})
    try:
        walk.store(stream.main, "")
        walk.store(stream.dead, "dlq/")
        walk.read_leaves()
    finally:
        walk.reading.close()  # helpers started for a walk that failed go
    walk.holders()
    walk.keys()
    walk.groups()
    walk.duplicates()
    walk.config()
    walk.quarantined()
    return walk.problems
