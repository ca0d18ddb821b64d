"""The few file-system moves the engine is built from, each safe against crashes and races.

A new file is written under tmp/, flushed, then renamed into place: a reader never sees a partial
file under a final name (maildir's rule). A writer holds a flock on what it is writing, so a
cleaner can tell a crashed writer's leftovers (lock free) from a live writer's (lock held): the
kernel drops the lock of a dead process, as in nq.

Nothing read from the store is trusted: files are opened with O_NOFOLLOW (a link is never
followed out of the home) and O_NONBLOCK (a FIFO never hangs a reader), and what fstat says is
checked before a byte is read or written. A file with a second name (st_nlink > 1) is never
written into: its other name may be outside the home, or, after a power loss, another message.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import stat
from collections.abc import Callable

from ..errors import DiskFull, EphqError, StorageError, StoragePermissionDenied

DIR_MODE = 0o700
FILE_MODE = 0o600
# How often a rename into a directory is retried when a concurrent prune keeps removing it.
_PLACE_TRIES = 20


def storage_error(exc: OSError, doing: str) -> EphqError:
    """The ephq error that an OSError stands for, with a message a user can act on."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"cannot {doing}: the disk is full{where}; free space and try again")
    if exc.errno == errno.EROFS:
        return StoragePermissionDenied(f"cannot {doing}: the file system is read-only{where}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoragePermissionDenied(
            f"cannot {doing}: permission denied{where}; check the owner and mode of the ephq home"
        )
    return StorageError(f"cannot {doing}: {exc.strerror or exc}{where}")


class translated:  # noqa: N801 (used as a function: `with translated("ack"):`)
    """Turn an unexpected OSError into the matching EphqError.

    A class rather than a @contextmanager generator: it wraps every call of the API, and a
    generator costs a microsecond more per call.
    """

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, OSError):
            raise storage_error(exc, self.doing) from exc


class NotOurs(Exception):
    """Something in a place of the store that ephq did not put there: a link, a directory, a
    device, a file too large or unreadable. ``shared`` is set for a regular file with another
    name, which can be dropped from the store without losing a byte."""

    def __init__(self, why: str, *, shared: bool = False) -> None:
        super().__init__(why)
        self.shared = shared


_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_SIZE = 65536
_NOT_A_FILE = {
    errno.ELOOP: "a symbolic link",
    errno.EISDIR: "a directory",
    errno.ENXIO: "a named pipe or a socket",  # a FIFO opened to write with no reader, a socket
}


def open_regular(path: str, flags: int) -> tuple[int, os.stat_result]:
    """An fd on the regular file at path, and its stat; NotOurs for anything else.

    FileNotFoundError passes through: the file was moved on by someone else.
    """
    try:
        fd = os.open(path, flags | _SAFE, FILE_MODE)
    except OSError as exc:
        if exc.errno in _NOT_A_FILE:
            raise NotOurs(_NOT_A_FILE[exc.errno]) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise NotOurs("a file ephq may not open") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotOurs(describe_kind(st.st_mode))
    return fd, st


def describe_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a file"
    return "a device"


def read_regular(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at path, and its stat; NotOurs past limit bytes."""
    fd, st = open_regular(path, os.O_RDONLY)
    try:
        if st.st_size > limit:
            raise NotOurs(
                f"{st.st_size} bytes, more than a message file holds", shared=st.st_nlink > 1
            )
        raw = read_bounded(fd, limit)
        if raw is None:  # it grew while we read: not a file ephq is writing
            raise NotOurs("a file that keeps growing", shared=st.st_nlink > 1)
        return raw, st
    finally:
        os.close(fd)


def read_bounded(fd: int, limit: int) -> bytes | None:
    """What fd holds from where it is to its end, or None past limit bytes."""
    chunk = os.read(fd, _READ_SIZE)
    if len(chunk) < _READ_SIZE:  # the usual message: one read, no second one to see EOF
        return chunk if len(chunk) <= limit else None
    chunks = [chunk]
    total = len(chunk)
    while chunk := os.read(fd, _READ_SIZE):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    return b"".join(chunks)


def still_there(path: str, st: os.stat_result) -> bool:
    """Whether path still names the file st was taken of (nothing moved it since)."""
    try:
        return os.path.samestat(os.lstat(path), st)
    except FileNotFoundError:
        return False


# File systems kept in memory: creating and freeing a file costs little there, and what the
# pool (pool.py) saves elsewhere costs more than it saves.
_MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})


def on_memory_file_system(path: str) -> bool:
    """Whether the directory at path is on tmpfs or ramfs, as /proc/self/mountinfo tells by its
    device; False where that cannot be told."""
    try:
        device = os.lstat(path).st_dev
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            table = mounts.read()
    except OSError:
        return False
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in table.splitlines():
        # <id> <parent> <major:minor> <root> <mount point> <options> [optional...] - <type> ...
        fields = line.split(" ", 3)
        if len(fields) > 3 and fields[2] == wanted and " - " in line:
            kind = line.split(" - ", 1)[1].split(" ", 1)[0]
            return kind in _MEMORY_FILE_SYSTEMS
    return False


_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)


@functools.cache
def boot_id() -> str | None:
    """This boot's id (Linux: a new one every boot), or None where it cannot be told: what tells
    a store whether a power loss may have come since a process last looked (pool.py)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as source:
            text = source.read(64).strip()
    except (OSError, ValueError):
        return None
    return text if is_boot_id(text) else None


def is_boot_id(text: str) -> bool:
    return _BOOT_ID.fullmatch(text) is not None


def is_real_dir(path: str) -> bool | None:
    """True for a directory (not a link to one), False for anything else, None if absent."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file_system(fd: int) -> None:
    """Flush everything of the file system that fd is on, its files' bytes and every directory,
    with one device flush (syncfs(2)); where that call is missing, sync(2), which flushes all.

    One flush for a whole batch, where fsync would take two a message. It also flushes whatever
    else is waiting on that file system, which is the price.
    """
    call = _syncfs()
    if call is None:
        os.sync()
    else:
        call(fd)


@functools.cache
def _syncfs() -> Callable[[int], None] | None:
    import ctypes  # here: it costs 2.5 ms of start-up that only a batch needs

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None

    def call(fd: int) -> None:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return call


def ensure_dir(path: str, *, durable: bool) -> None:
    """Create path and any missing parents; when durable, make each new entry survive power loss.

    A consumer may prune an empty parent between our mkdirs, so a vanished parent is made again.
    """
    for _ in range(_PLACE_TRIES):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            return
        except FileNotFoundError:
            ensure_dir(os.path.dirname(path), durable=durable)
            continue
        if durable:
            try:
                fsync_dir(os.path.dirname(path))
            except FileNotFoundError:
                continue  # pruned with its new child already: make both again
        return
    parent = os.path.dirname(path)
    if os.path.isdir(parent):  # procfs, say: mkdir's ENOENT for a parent that is there
        raise StorageError(f"cannot create {path}: {parent} takes no new directories")
    raise StorageError(f"cannot create {path}: its parent directory keeps disappearing")


def write_all(fd: int, data: bytes, *, recycled: bool = False) -> None:
    """Write all of data from the file's start; for a recycled file (pool.py), cut off whatever
    it held after. (A new file holds nothing to cut: the ftruncate would be a syscall for
    nothing on every enqueue.)"""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if recycled:
        os.ftruncate(fd, len(data))


def replace_file(tmp: str, path: str, data: bytes, *, durable: bool) -> None:
    """Write data into the new file tmp, then rename it over path: a reader sees the old
    bytes or the new, never part of them. When durable, the bytes are flushed before the
    rename and the rename after it. On failure tmp is removed and the error raised."""
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(path))


def fill_locked(fd: int, path: str, data: bytes, *, durable: bool, recycled: bool) -> None:
    """Lock a file we just opened (a recycled one comes locked from the pool), write data into
    it and, when durable, flush it.

    On failure the file is removed and closed, and the error raised.
    """
    try:
        if not recycled:
            fcntl.flock(fd, fcntl.LOCK_EX)
        write_all(fd, data, recycled=recycled)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise


def place(
    src: str, dest_dir: str, name: str, *, durable_dirs: bool, flush: bool, dest_known: bool = False
) -> bool:
    """Rename src to dest_dir/name, creating dest_dir if a prune removed it. False if src is gone.

    dest_known: the caller knows dest_dir is there, so a rename that finds nothing means src is
    gone, without the lstat that tells which is missing (consumers racing for the same names
    lose most of their renames, and under that contention the lstat costs as much as one).

    flush: the directory entry is flushed too, so the move survives power loss. Moves that
    at-least-once delivery lets a power loss undo (leases, nacks) do not flush, nor does a
    caller that flushes many moves at once. durable_dirs: a directory made on the way is
    flushed into its parent; a durable store passes it for every move, because a durable
    enqueue may later rely on a directory that a lease or a nack made. The directory is opened
    before the rename, because a consumer may take the message and prune the directory before
    we get to flush it.
    """
    dest = f"{dest_dir}/{name}"
    for _ in range(_PLACE_TRIES):
        dir_fd = -1
        try:
            if flush:
                dir_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.rename(src, dest)
            if flush:
                os.fsync(dir_fd)
            return True
        except FileNotFoundError:
            if dest_known or not os.path.lexists(src):
                return False
            ensure_dir(dest_dir, durable=durable_dirs)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
    raise StorageError(f"cannot move {src} into {dest_dir}: the directory keeps disappearing")


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def listdir(path: str) -> list[str]:
    """The names in a directory, or none if it does not exist (a prune may have removed it)."""
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def real_subdirs(path: str) -> list[str]:
    """The names of the directories in path, links to directories left out."""
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def try_lock(path: str) -> int | None:
    """An fd on path holding our exclusive flock, or None if path is gone or someone holds it.

    Only for what ephq made itself (a file or a directory, never through a link); anything else
    raises NotOurs.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _SAFE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_A_FILE or exc.errno in (errno.EACCES, errno.EPERM):
            raise NotOurs(_NOT_A_FILE.get(exc.errno, "a file ephq may not open")) from None
        raise
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        os.close(fd)
        raise NotOurs(describe_kind(mode))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def owner_is_gone(path: str) -> bool:
    """True when nobody holds the flock on path: its writer finished or died.

    Only meaningful for files or directories whose writer takes the lock before anyone can see
    them, or after a grace period long past creation.
    """
    fd = try_lock(path)
    if fd is None:
        return False
    os.close(fd)
    return True
