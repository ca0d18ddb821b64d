"""The few file-system moves the engine is built from, each safe against crashes and races.

A new file is written under tmp/, flushed, then renamed into place: a reader never sees a partial
file under a final name (maildir's rule). A writer holds a flock on what it is writing, so a
cleaner can tell a crashed writer's leftovers (lock free) from a live writer's (lock held): the
kernel drops the lock of a dead process, as in nq.
"""

from __future__ import annotations

import errno
import fcntl
import os

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


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    raise StorageError(f"cannot create {path}: its parent directory keeps disappearing")


def write_all(fd: int, data: bytes) -> None:
    """Write all of data from the file's start and cut off whatever a recycled file held after."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.ftruncate(fd, len(data))


def fill_locked(fd: int, path: str, data: bytes, *, durable: bool) -> None:
    """Lock a new file we just opened, write data into it and, when durable, flush it.

    On failure the file is removed and closed, and the error raised.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise


def place(
    src: str, dest_dir: str, name: str, *, durable: bool, sync_dest: bool | None = None
) -> bool:
    """Rename src to dest_dir/name, creating dest_dir if a prune removed it. False if src is gone.

    When durable, the directory entry is flushed too: the move survives power loss. Moves that
    at-least-once delivery lets a power loss undo (leases, nacks) pass durable=False; a caller
    moving many files into few directories passes sync_dest=False and flushes each one once.
    The directory is opened before the rename, because a consumer may take the message and
    prune the directory before we get to flush it.
    """
    sync = durable if sync_dest is None else sync_dest
    dest = f"{dest_dir}/{name}"
    for _ in range(_PLACE_TRIES):
        dir_fd = -1
        try:
            if sync:
                dir_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.rename(src, dest)
            if sync:
                os.fsync(dir_fd)
            return True
        except FileNotFoundError:
            if not os.path.lexists(src):
                return False
            ensure_dir(dest_dir, durable=durable)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
    raise StorageError(f"cannot move {src} into {dest_dir}: the directory keeps disappearing")


_READ_SIZE = 65536


def read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, _READ_SIZE)
        if len(chunk) < _READ_SIZE:  # the usual message: one read, no second one to see EOF
            return chunk
        chunks = [chunk]
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


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


def try_lock(path: str) -> int | None:
    """An fd on path holding our exclusive flock, or None if path is gone or someone holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
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
