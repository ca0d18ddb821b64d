"""Durable single enqueues share flushes (ephq/files/flushing.py) and stage their files in tmp/
(recovery.py), with real processes: a flush in progress is played by this test holding the
store directory's flock, which is what a producer flushing for the others holds."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ephq import Queue
from ephq.files import recovery

S = "s"

PRODUCER = """
import sys
from ephq import Queue
q = Queue(sys.argv[1])
q.enqueue("s", {"first": sys.argv[2]})  # a process's first enqueue flushes on its own
print("ready", flush=True)
sys.stdin.readline()
print(q.enqueue("s", {"second": sys.argv[2]}), flush=True)
"""


def _counts(home: Path) -> tuple[int, int]:
    try:
        raw = (home / S / "flushes").read_bytes()
    except FileNotFoundError:
        return 0, 0
    begun, finished = struct.unpack("<QQ", raw[:16])
    return begun, finished


def _start(home: Path, n: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(home), str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    return procs


@contextmanager
def _flushing(home: Path) -> Iterator[int]:
    """Hold the flock a producer holds while it flushes for the others; yield the inode."""
    fd = os.open(home / S, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _wait_for_waiters(inode: int, count: int) -> None:
    """Until count processes wait for a flock on inode (/proc/locks lists them with '->')."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open("/proc/locks") as locks:
            waiting = [
                line
                for line in locks
                if "->" in line and "FLOCK" in line and line.split()[-3].endswith(f":{inode}")
            ]
        if len(waiting) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{count} producers never waited for the flush")


@pytest.mark.timeout(120)
def test_producers_that_wrote_during_a_flush_share_the_next_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    procs = _start(home, 3)
    begun_before, _ = _counts(home)
    with _flushing(home) as inode:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        _wait_for_waiters(inode, 3)  # each wrote its file, then waited for this "flush"
    ids = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    begun, finished = _counts(home)
    assert (begun - begun_before, finished) == (1, begun)  # one flush made all three durable
    with Queue(home) as q:
        got = {m.id: m.data for m in q.dequeue_many(S, 10)}
    assert len(got) == 6
    assert {got[i]["second"] for i in ids} == {"0", "1", "2"}


def _staged_leftover(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    (proc,) = _start(home, 1)
    with _flushing(home) as inode:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _wait_for_waiters(inode, 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (name,) = [n for n in os.listdir(home / S / "tmp") if n.endswith(".staged")]
    return home, home / S / "tmp" / name


@pytest.mark.timeout(120)
def test_a_producer_killed_before_its_flush_leaves_a_whole_file_that_is_placed(
    tmp_path: Path,
) -> None:
    """Killed after writing, before the move: what it wrote is placed by the next look (it
    never said the message was enqueued; at-least-once lets it be delivered)."""
    home, _ = _staged_leftover(tmp_path)
    with Queue(home) as q:
        assert q.check()  # reported: a writer stopped, and what it left is to be placed
        got = [m.data for m in q.dequeue_many(S, 10)]
        assert got == [{"first": "0"}, {"second": "0"}]
        assert q.check() == []
    assert not [n for n in os.listdir(home / S / "tmp") if n.endswith(".staged")]


def test_a_torn_staged_file_is_never_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that do not match the name's CRC-32 (a power loss before the flush): a young one
    may be a writer's still, so it is left and not reported; past the grace it is removed."""
    home, path = _staged_leftover(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with Queue(home) as q:
        assert [m.data for m in q.dequeue_many(S, 10)] == [{"first": "0"}]
        assert q.check() == []
        assert path.exists()
        monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)
        problems = q.check()
        assert [p.kind for p in problems] == ["stale-tmp"]
        q.check(repair=True)
        assert q.check() == []
        assert not path.exists()
        assert q.dequeue(S) is None


def test_a_staged_name_ephq_does_not_write_is_foreign(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Queue(home) as q:
        q.enqueue(S, 1)
        bad = home / S / "tmp" / "not-a-message.0badc0de.12345678.staged"
        bad.write_text("{}")
        problems = q.check()
        assert [(p.kind, p.path) for p in problems] == [("foreign", str(bad))]
        assert q.dequeue(S) is not None
        assert bad.exists()  # recovery leaves what is not its own
