"""What the ways of making a new file durable cost on a file system, in plain os calls.

    python bench/flushes.py [--workdir DIR] [--n 300] [--reps 3]

Each way writes a ~200-byte file in tmp/ and moves it into ready/, N times, and the ways take
turns, one after another, REPS times:
- file, then directory: fsync the file, rename, fsync ready/ (ephq's enqueue before one flush);
- file: fsync the file, rename (ephq's enqueue now; ext4, XFS and btrfs keep its name too);
- syncfs: syncfs(2) of the file system, rename (tried for shared flushes, and dropped);
- file and tmp/: fsync the file, fsync tmp/, rename (what POSIX alone asks for its name).
Prints the median and P90 time of each, in µs, per rep.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
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


WAYS = {
    "file, then directory": file_then_directory,
    "file": file_only,
    "syncfs": syncfs,
    "file and tmp/": file_and_tmp,
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
                times = []
                for i in range(args.n):
                    start = time.perf_counter()
                    way(root, i)
                    times.append(time.perf_counter() - start)
                times.sort()
                print(
                    f"rep {rep + 1} {name:22} median {statistics.median(times) * 1e6:7.1f} µs"
                    f"  P90 {times[int(len(times) * 0.9)] * 1e6:7.1f} µs"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
