"""A crash-state explorer: every state a crash can leave a store in, under three models.

`Recorder.recording()` wraps the os functions the engine changes files with (open, write, pwrite,
ftruncate, fsync, rename, unlink, mkdir, rmdir, close), and ephq's one call that is not in os
(syncfs(2), in ephq.files.fsio), while an operation runs: each real call is made, then logged
with absolute paths. `Model` replays the log over a copy of the tree as it was
before (taken as fully synced) and after every call can say what a crash at that instant leaves:

- PROCESS: the process died; the kernel kept everything it was told.
- DATA_LOSS: the power failed; every name is as the kernel had it, but each file holds only what
  its last fsync flushed (nothing, if it was never flushed).
- STRICT: the power failed; each directory also holds only the entries its last fsync flushed,
  so a rename whose source directory was not flushed may leave both names; but the entry that
  names a file when the file is fsynced sticks with it. POSIX promises less (not that entry),
  but ext4, XFS and btrfs keep it: a journal commits the create or rename with the inode, and
  ext4 without a journal writes a new entry's directory block on fsync. Otherwise this is what
  ext4 without a journal may leave. An fdatasync flushes a file's bytes but not its name: it
  commits no metadata that reading the bytes back does not need (an overwrite in place, of the
  same size, flushes only data), so no entry sticks with it.
- TORN: names as STRICT, and each file whose bytes were not all flushed holds, at its new
  size, its new first sector and its flushed bytes after that (writeback reached the disk for
  part of a write; a disk writes a sector whole, no more). A file of one sector holds its new
  bytes whole: writeback may always flush what nobody asked to flush, under names that were
  not.

Two names left for one file are materialised as hard links, as fsck leaves them. The log is
checked against the real tree after the operation, so a call the recorder missed fails the test
instead of hiding a state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from typing import Any

from ephq.files import fsio

PROCESS = "process"
DATA_LOSS = "data-loss"
STRICT = "strict"
TORN = "torn"
MODELS = (PROCESS, DATA_LOSS, STRICT, TORN)
SECTOR = 512

Event = tuple[Any, ...]


class ModelError(AssertionError):
    """The replayed log disagrees with what the real calls did: the recorder missed something."""


class Node:
    __slots__ = ("data", "entries", "is_dir", "synced_data", "synced_entries")

    def __init__(self, is_dir: bool, data: bytes = b"") -> None:
        self.is_dir = is_dir
        self.data = data
        self.synced_data = data
        self.entries: dict[str, Node] = {}
        self.synced_entries: dict[str, Node] = {}


class Recorder:
    """Logs the file-system calls made under root while recording() is active."""

    _WRAPPED = (
        "open",
        "close",
        "write",
        "pwrite",
        "ftruncate",
        "fsync",
        "fdatasync",
        "rename",
        "replace",
        "unlink",
        "remove",
        "rmdir",
        "mkdir",
        "link",
        "symlink",
        "truncate",
        "sync",
    )

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.events: list[Event] = []
        self.start: Model | None = None  # the tree when recording began
        self._fds: set[int] = set()  # fds opened under root

    def mark(self, *info: Any) -> None:
        """Note a fact in the log (an enqueue returned, an ack began) at this instant."""
        self.events.append(("mark", *info))

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    @staticmethod
    def _abs(path: Any, dir_fd: int | None) -> str:
        text = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(text):
            text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
        return os.path.abspath(text)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        if self.start is None:
            self.start = Model(self.root)
        self._adopt_open_files()
        real = {name: getattr(os, name) for name in self._WRAPPED}
        wrappers = {**self._fd_calls(real), **self._path_calls(real)}
        for name in ("link", "symlink", "truncate", "sync"):
            wrappers[name] = _unsupported(name)
        for name, wrapper in wrappers.items():
            setattr(os, name, wrapper)
        real_syncfs = fsio.sync_file_system

        def syncfs(fd: int) -> None:
            real_syncfs(fd)
            self.events.append(("syncfs",))

        fsio.sync_file_system = syncfs
        try:
            yield
        finally:
            fsio.sync_file_system = real_syncfs
            for name, function in real.items():
                setattr(os, name, function)

    def _adopt_open_files(self) -> None:
        """Log as opened the files under root that the process already holds open (a store
        keeps some open across operations), so that writes through them are replayed too."""
        for entry in os.listdir("/proc/self/fd"):
            fd = int(entry)
            try:
                path = os.readlink(f"/proc/self/fd/{entry}")
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            except OSError:
                continue  # the fd listdir itself used, closed since
            if regular and fd not in self._fds and self._inside(path):
                self._fds.add(fd)
                self.events.append(("open", path, os.O_RDWR, fd))

    def _fd_calls(self, real: dict[str, Any]) -> dict[str, Any]:
        events, fds = self.events, self._fds

        def open_(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            full = self._abs(path, dir_fd)
            fd: int = real["open"](path, flags, mode, dir_fd=dir_fd)
            if self._inside(full):
                fds.add(fd)
                events.append(("open", full, flags, fd))
            return fd

        def close(fd: int) -> None:
            real["close"](fd)
            if fd in fds:
                fds.discard(fd)
                events.append(("close", fd))

        def write(fd: int, data: Any) -> int:
            n: int = real["write"](fd, data)
            if fd in fds:
                events.append(("write", fd, bytes(data)[:n]))
            return n

        def pwrite(fd: int, data: Any, offset: int) -> int:
            n: int = real["pwrite"](fd, data, offset)
            if fd in fds:
                events.append(("pwrite", fd, bytes(data)[:n], offset))
            return n

        def ftruncate(fd: int, length: int) -> None:
            real["ftruncate"](fd, length)
            if fd in fds:
                events.append(("truncate", fd, length))

        def flush(name: str) -> Any:
            def call(fd: Any) -> None:
                real[name](fd)
                number = fd if isinstance(fd, int) else fd.fileno()
                if number in fds:
                    events.append((name, number))

            return call

        return {
            "open": open_,
            "close": close,
            "write": write,
            "pwrite": pwrite,
            "ftruncate": ftruncate,
            "fsync": flush("fsync"),
            "fdatasync": flush("fdatasync"),
        }

    def _path_calls(self, real: dict[str, Any]) -> dict[str, Any]:
        events = self.events

        def rename(
            src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
        ) -> None:
            full_src, full_dst = self._abs(src, src_dir_fd), self._abs(dst, dst_dir_fd)
            real["rename"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if self._inside(full_src) or self._inside(full_dst):
                events.append(("rename", full_src, full_dst))

        def removal(name: str) -> Any:
            def remove(path: Any, *, dir_fd: int | None = None) -> None:
                full = self._abs(path, dir_fd)
                real[name](path, dir_fd=dir_fd)
                if self._inside(full):
                    events.append(("rmdir" if name == "rmdir" else "unlink", full))

            return remove

        def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            full = self._abs(path, dir_fd)
            real["mkdir"](path, mode, dir_fd=dir_fd)
            if self._inside(full):
                events.append(("mkdir", full))

        return {
            "rename": rename,
            "replace": rename,
            "unlink": removal("unlink"),
            "remove": removal("remove"),
            "rmdir": removal("rmdir"),
            "mkdir": mkdir,
        }


def _unsupported(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise ModelError(f"os.{name} is not modelled by the crash-state explorer")

    return call


def load_tree(path: str) -> Node:
    """The tree at path as a synced starting state (hard links share a node)."""
    seen: dict[tuple[int, int], Node] = {}

    def load(p: str) -> Node:
        st = os.lstat(p)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return seen[key]
        if stat.S_ISDIR(st.st_mode):
            node = Node(True)
            for name in os.listdir(p):
                node.entries[name] = load(os.path.join(p, name))
            node.synced_entries = dict(node.entries)
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as handle:
                node = Node(False, handle.read())
        else:
            raise ModelError(f"the explorer models files and directories only: {p}")
        seen[key] = node
        return node

    return load(path)


# An image: a crash state, as sorted (path, kind, content digest, link group) rows, with the
# contents alongside. Equal images are one state.
Image = tuple[tuple[str, str, str, int], ...]


class Model:
    def __init__(self, root: str) -> None:
        self.root_path = os.path.realpath(root)
        self.root = load_tree(self.root_path)
        self._fds: dict[int, list[Any]] = {}  # fd -> [node, offset]
        self.contents: dict[str, bytes] = {}  # digest -> bytes

    # -- replay ----------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[Node, str]:
        rel = os.path.relpath(path, self.root_path)
        parts = rel.split("/")
        node = self.root
        for part in parts[:-1]:
            child = node.entries.get(part)
            if child is None or not child.is_dir:
                raise ModelError(f"no directory {part!r} on the way to {path}")
            node = child
        return node, parts[-1]

    def _lookup(self, path: str) -> Node | None:
        if path == self.root_path:
            return self.root
        parent, name = self._split(path)
        return parent.entries.get(name)

    def apply(self, event: Event) -> None:
        getattr(self, "_" + event[0])(*event[1:])

    def _mark(self, *info: Any) -> None:
        pass

    def _open(self, path: str, flags: int, fd: int) -> None:
        node = self._lookup(path)
        if node is None:
            if not flags & os.O_CREAT:
                raise ModelError(f"opened {path}, which the model does not have")
            parent, name = self._split(path)
            node = Node(False)
            parent.entries[name] = node
        elif flags & os.O_TRUNC and not node.is_dir:
            node.data = b""
        self._fds[fd] = [node, 0]

    def _close(self, fd: int) -> None:
        self._fds.pop(fd, None)

    def _put(self, node: Node, at: int, data: bytes) -> None:
        old = node.data
        if at > len(old):
            old += bytes(at - len(old))
        node.data = old[:at] + data + old[at + len(data) :]

    def _write(self, fd: int, data: bytes) -> None:
        slot = self._fds[fd]
        self._put(slot[0], slot[1], data)
        slot[1] += len(data)

    def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self._put(self._fds[fd][0], offset, data)

    def _truncate(self, fd: int, length: int) -> None:
        node = self._fds[fd][0]
        node.data = node.data[:length] + bytes(max(0, length - len(node.data)))

    def _fdatasync(self, fd: int) -> None:
        node = self._fds[fd][0]
        if node.is_dir:
            node.synced_entries = dict(node.entries)
        else:
            node.synced_data = node.data

    def _fsync(self, fd: int) -> None:
        node = self._fds[fd][0]
        self._fdatasync(fd)
        if node.is_dir:
            return
        # The entry naming the file sticks with it (see STRICT): only that entry, not the rest
        # of its directory, and not the directory's own entry in its parent.
        todo = [self.root]
        seen: set[int] = set()
        while todo:
            parent = todo.pop()
            if id(parent) in seen:
                continue
            seen.add(id(parent))
            for name, child in parent.entries.items():
                if child is node:
                    parent.synced_entries[name] = node
                elif child.is_dir:
                    todo.append(child)

    def _rename(self, src: str, dst: str) -> None:
        src_parent, src_name = self._split(src)
        dst_parent, dst_name = self._split(dst)
        node = src_parent.entries.get(src_name)
        if node is None:
            raise ModelError(f"renamed {src}, which the model does not have")
        if dst_parent.entries.get(dst_name) is node:
            return  # two names of one file: rename(2) does nothing
        del src_parent.entries[src_name]
        dst_parent.entries[dst_name] = node

    def _unlink(self, path: str) -> None:
        parent, name = self._split(path)
        if parent.entries.pop(name, None) is None:
            raise ModelError(f"removed {path}, which the model does not have")

    _rmdir = _unlink

    def _syncfs(self) -> None:
        """Everything the kernel holds for the file system reaches the disk."""
        seen: set[int] = set()
        todo = [self.root]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            node.synced_data = node.data
            node.synced_entries = dict(node.entries)
            todo.extend(node.entries.values())

    def _mkdir(self, path: str) -> None:
        parent, name = self._split(path)
        parent.entries[name] = Node(True)

    # -- crash images ----------------------------------------------------------------------

    def image(self, model: str) -> Image:
        """What a crash under `model` would leave now."""
        synced_names = model in (STRICT, TORN)
        synced_data = model != PROCESS
        torn = model == TORN
        rows: list[tuple[str, str, str, int]] = []
        groups: dict[int, int] = {}

        def walk(node: Node, rel: str, on_path: frozenset[int]) -> None:
            entries = node.synced_entries if synced_names else node.entries
            for name, child in entries.items():
                path = f"{rel}/{name}" if rel else name
                if child.is_dir:
                    if id(child) in on_path:
                        continue  # a cycle only the strict model can make up: fsck breaks it
                    rows.append((path, "d", "", 0))
                    walk(child, path, on_path | {id(child)})
                else:
                    data = child.synced_data if synced_data else child.data
                    if torn and child.data != child.synced_data:
                        data = _torn(child.data, child.synced_data)
                    digest = hashlib.blake2b(data, digest_size=12).hexdigest()
                    self.contents[digest] = data
                    group = groups.setdefault(id(child), len(groups) + 1)
                    rows.append((path, "f", digest, group))

        walk(self.root, "", frozenset({id(self.root)}))
        rows.sort()
        # Link groups renumbered in path order, so equal states compare equal.
        renumber: dict[int, int] = {}
        return tuple(
            (p, k, d, renumber.setdefault(g, len(renumber) + 1) if k == "f" else 0)
            for p, k, d, g in rows
        )

    def materialise(self, image: Image, dest: str) -> None:
        first_path: dict[int, str] = {}
        os.makedirs(dest, exist_ok=True)
        for path, kind, digest, group in image:
            full = os.path.join(dest, path)
            if kind == "d":
                os.makedirs(full, exist_ok=True)
            elif group in first_path:
                os.link(first_path[group], full)
            else:
                with open(full, "wb") as handle:
                    handle.write(self.contents[digest])
                first_path[group] = full

    def assert_matches(self, path: str) -> None:
        """The replayed tree equals the real one: no call was missed."""
        real = load_tree(path)

        def compare(model: Node, actual: Node, rel: str) -> None:
            if model.is_dir != actual.is_dir:
                raise ModelError(f"{rel}: the model and the disk disagree on its kind")
            if not model.is_dir:
                if model.data != actual.data:
                    raise ModelError(f"{rel}: the model's content differs from the disk's")
                return
            if set(model.entries) != set(actual.entries):
                raise ModelError(
                    f"{rel or '.'}: the model lists {sorted(model.entries)}, "
                    f"the disk {sorted(actual.entries)}"
                )
            for name, child in model.entries.items():
                compare(child, actual.entries[name], f"{rel}/{name}")

        compare(self.root, real, "")


def _torn(new: bytes, flushed: bytes) -> bytes:
    """A file of the new size whose first sector reached the disk and whose others did not (a
    sector never written reads as zeros)."""
    mixed = new[:SECTOR] + flushed[SECTOR : len(new)]
    return mixed + bytes(len(new) - len(mixed))


class Explorer:
    """Replays a recorded log and yields each distinct crash state once."""

    def __init__(self, recorder: Recorder) -> None:
        assert recorder.start is not None, "nothing was recorded"
        self.root = recorder.root
        self.events = recorder.events
        self.model = recorder.start

    def states(self) -> Iterator[tuple[int, str, Image]]:
        """(events applied, model, image) after every call, and before the first.

        Equal images in a row are given once; the caller dedupes further by what it checks
        (the same image must be checked again where more had been promised).
        """
        last: dict[str, Image] = {}
        for step in range(len(self.events) + 1):
            if step:
                event = self.events[step - 1]
                self.model.apply(event)
                if event[0] == "mark":  # nothing changed on disk, but more may be owed now
                    for kind in MODELS:
                        yield step, kind, last[kind]
                    continue
            for kind in MODELS:
                image = self.model.image(kind)
                if last.get(kind) != image:
                    last[kind] = image
                    yield step, kind, image

    def materialise(self, image: Image, dest: str) -> None:
        self.model.materialise(image, dest)

    def assert_complete(self) -> None:
        """After states() ran out: the replayed log ends where the real tree is."""
        self.model.assert_matches(self.root)
