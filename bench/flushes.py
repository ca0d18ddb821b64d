"""What the ways of making a new file durable cost on a file system, in plain os calls.

    python bench/flushes.py [--workdir DIR] [--n 300] [--reps 3]

Each way writes a ~200-byte file in tmp/ and moves it into ready/, N times, and the ways take
turns, one after another, REPS times:
- file, then directory: fsync the file, rename, fsync ready/ (ephq's enqueue before one flush);
- file: fsync the file, rename (ephq's enqueue now; ext4, XFS and btrfs keep its name too);
- syncfs: syncfs(2) of the file system, rename (tried for shared flushes, and dropped);
- file and tmp/: fsync the file, fsync tmp/, rename (what POSIX alone asks for its name);
- kept file: overwrite, in place, a file whose name, size and blocks were flushed before (as a
  recycled file could be), fdatasync it, rename: a flush of data alone, no metadata;
- made ahead: a burst's files made MADE_AHEAD at a time, zero-filled, with one syncfs for all of
  them (their names, sizes and blocks), each then moved to tmp/, overwritten, fdatasynced and
  renamed: kept files for a stream that has none yet (tried for a burst into a new stream;
  the enqueue that makes them pays for all, so compare means);
- SQLite FULL: one INSERT committed in WAL mode with synchronous=FULL (one append to the WAL,
  fsynced), in the same run, the peer with the same promise.
Prints the median, P90 and mean time of each, in µs, per rep.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable

DATA = b'{"x":' + b"1" * 200 + b"}"
_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write(root: str, i: int, flush: Callable[[int], None]) -> str:
    path = f"{root}/tmp/{i}"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        os.write(fd, DATA)
        flush(fd)
    finally:
        os.close(fd)
    return path


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_then_directory(root: str, i: int) -> None:
    os.rename(_write(root, i, os.fsync), f"{root}/ready/{i}")
    _fsync_dir(f"{root}/ready")


def file_only(root: str, i: int) -> None:
    os.rename(_write(root, i, os.fsync), f"{root}/ready/{i}")


def syncfs(root: str, i: int) -> None:
    os.rename(_write(root, i, _syncfs), f"{root}/ready/{i}")


def file_and_tmp(root: str, i: int) -> None:
    path = _write(root, i, os.fsync)
    _fsync_dir(f"{root}/tmp")
    os.rename(path, f"{root}/ready/{i}")


def _kept_files(root: str, count: int) -> None:
    """count files in kept/ of DATA's size in a whole block of spaces, all flushed: data, sizes
    and names."""
    os.makedirs(f"{root}/kept")
    for i in range(count):
        fd = os.open(f"{root}/kept/{i}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        try:
            os.write(fd, DATA.ljust(KEPT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(f"{root}/kept")
    _fsync_dir(root)


def kept_file(root: str, i: int) -> None:
    path = f"{root}/kept/{i}"
    fd = os.open(path, os.O_WRONLY)
    try:
        # The same size as before (JSON allows the spaces after a record): no metadata to flush.
        os.pwrite(fd, DATA.replace(b"1", b"2").ljust(KEPT_BYTES), 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(path, f"{root}/ready/{i}")


def made_ahead(root: str, i: int) -> None:
    if i % MADE_AHEAD == 0:
        os.makedirs(f"{root}/made", exist_ok=True)
        for j in range(i, i + MADE_AHEAD):
            fd = os.open(f"{root}/made/{j}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            try:
                os.write(fd, bytes(KEPT_BYTES))
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _syncfs(fd)  # one flush: the files' names, sizes and blocks (and all else waiting)
        finally:
            os.close(fd)
    path = f"{root}/tmp/{i}"
    os.rename(f"{root}/made/{i}", path)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, DATA.ljust(KEPT_BYTES), 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(path, f"{root}/ready/{i}")


def _database(root: str) -> sqlite3.Connection:
    db = sqlite3.connect(f"{root}/q.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, data BLOB)")
    return db


_databases: dict[str, sqlite3.Connection] = {}


def sqlite_full(root: str, i: int) -> None:
    _databases[root].execute("INSERT INTO q (data) VALUES (?)", (DATA,))


KEPT_BYTES = 4096
MADE_AHEAD = 32
WAYS = {
    "file, then directory": file_then_directory,
    "file": file_only,
    "syncfs": syncfs,
    "file and tmp/": file_and_tmp,
    "kept file, fdatasync": kept_file,
    "made ahead, syncfs": made_ahead,
    "SQLite FULL": sqlite_full,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="ephq-bench-flushes-", dir=args.workdir)
    try:
        for rep in range(args.reps):
            for name, way in WAYS.items():
                root = os.path.join(base, f"{rep}-{way.__name__}")
                os.makedirs(f"{root}/tmp")
                os.makedirs(f"{root}/ready")
                if way is kept_file:
                    _kept_files(root, args.n)
                elif way is sqlite_full:
                    _databases[root] = _database(root)  # opened before the clock starts
                times = []
                for i in range(args.n):
                    start = time.perf_counter()
                    way(root, i)
                    times.append(time.perf_counter() - start)
                times.sort()
                print(
                    f"rep {rep + 1} {name:22} median {statistics.median(times) * 1e6:7.1f} µs"
                    f"  P90 {times[int(len(times) * 0.9)] * 1e6:7.1f} µs"
                    f"  mean {statistics.mean(times) * 1e6:7.1f} µs"
                )
    finally:
        for db in _databases.values():
            db.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
