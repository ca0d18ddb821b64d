"""Acked files are emptied and recycled; batches never crowd one directory."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ephq import Queue
from ephq.files import pool
from ephq.files.fsio import on_memory_file_system


@pytest.fixture(autouse=True)
def _pooling_here(request: pytest.FixtureRequest) -> None:
    """The pool is off on tmpfs (pool.py): its tests need a home on a disk's file system."""
    if "home" in request.fixturenames and on_memory_file_system(tempfile.gettempdir()):
        pytest.skip("the temporary directory is on a memory file system, where nothing is pooled")


def _message_files(home: Path, state: str) -> list[Path]:
    return [p for p in (home / "s" / state).rglob("*") if p.is_file()]


def test_acked_content_does_not_linger_and_its_file_is_reused(q: Queue, home: Path) -> None:
    q.enqueue("s", {"password-reset-token": "hunter2"})
    (ready,) = _message_files(home, "ready")
    inode = ready.stat().st_ino
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.ack("s", m.receipt)
    for path in (home / "s").rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path
    # Another producer's first enqueue takes the acked file (a producer that has enqueued
    # before leaves the pool's files to gather, to settle many with one flush: pool.py).
    with Queue(home) as producer:
        producer.enqueue("s", "next")
    (reused,) = _message_files(home, "ready")
    assert reused.stat().st_ino == inode
    got = q.dequeue("s")
    assert got is not None and got.data == "next"
    assert q.check() == []


def test_recycled_files_hold_exactly_the_new_message(q: Queue, home: Path) -> None:
    q.enqueue("s", "x" * 5000)
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.ack("s", m.receipt)
    q.enqueue_many("s", ["short", "also short"])
    assert [x.data for x in q.dequeue_many("s", 5)] == ["short", "also short"]


def test_a_big_batch_is_spread_over_many_leaves(q: Queue, home: Path) -> None:
    ids = q.enqueue_many("s", list(range(5000)))
    leaves = {p.parent for p in _message_files(home, "ready")}
    assert len(leaves) >= 5
    assert max(len(os.listdir(leaf)) for leaf in leaves) <= 1024
    assert [m.id for m in q.dequeue_many("s", 5000)] == ids


def test_the_pool_keeps_at_most_its_slots_and_frees_big_files(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "SLOTS", 4)
    q.enqueue_many("s", list(range(20)))
    q.enqueue("s", "x" * (pool.MAX_KEPT_BYTES + 1))
    for m in q.dequeue_many("s", 21):
        assert m.receipt
        q.ack("s", m.receipt)
    kept = [p for p in (home / "s" / "pool").iterdir() if p.name.endswith(pool.FREE_SUFFIX)]
    assert 1 <= len(kept) <= 4
    assert all(p.stat().st_size <= pool.MAX_KEPT_BYTES for p in kept)
    assert all(set(p.read_bytes()) <= {0} for p in kept)
    assert q.check() == []


def test_ack_without_a_pool_directory_frees_the_file(q: Queue, home: Path) -> None:
    q.enqueue_many("s", ["a", "b"])
    shutil.rmtree(home / "s" / "pool")  # as a store made before the pool had a directory
    for m in q.dequeue_many("s", 2):
        assert m.receipt
        q.ack("s", m.receipt)
    assert _message_files(home, "ready") == _message_files(home, "inflight") == []
    assert q.stats("s").inflight == 0
    assert q.check() == []


def test_threads_of_one_process_ack_through_one_pool(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "SLOTS", 16)  # small, so threads collide and list the pool
    q.enqueue_many("s", list(range(800)))
    errors: list[BaseException] = []
    acked: list[int] = []

    def consume() -> None:
        try:
            while (m := q.dequeue("s", visibility=60)) is not None:
                assert m.receipt
                q.ack("s", m.receipt)
                acked.append(m.data)
        except BaseException as exc:  # reported below, with the thread's own traceback lost
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(acked) == list(range(800))
    assert len([p for p in (home / "s" / "pool").iterdir() if pool.is_slot(p.name)]) <= 16
    assert q.check() == []


def _give_to_one_slot(pool_dir: str, tmp: str, slot: str, gives: int) -> None:
    acker = pool.FilePool(pool_dir, lambda path, problem: False, lambda *placed: None)
    for i in range(gives):
        acked = f"{tmp}/acked-{i}"
        with open(acked, "wb") as f:
            f.write(b"acked")
        acker._empties = [slot]  # (its next empty slot)
        acker.give(acked)


@pytest.mark.timeout(120)
def test_a_producer_racing_an_acker_for_one_slot_never_fails(q: Queue, home: Path) -> None:
    """A producer's take of a pooled file can find the slot empty (another producer took it)
    and, a moment later, filled again by an ack. That is a slot taken first, not a missing
    directory: the enqueue goes on (it failed in CI, once, with 'No such file or directory')."""
    q.enqueue("s", "makes the stream")
    pool_dir, tmp, slot = str(home / "s" / "pool"), str(home / "s" / "tmp"), "7.free"
    acker = multiprocessing.get_context("fork").Process(
        target=_give_to_one_slot, args=(pool_dir, tmp, slot, 3000)
    )
    producer = pool.FilePool(pool_dir, lambda path, problem: False, lambda *placed: None)
    producer.look_after_boot()
    fresh, taken = f"{tmp}/fresh", 0
    acker.start()
    try:
        while acker.is_alive():
            producer._hints = [slot]  # the slot it saw listed
            fd, recycled = producer.open_new(fresh)
            os.close(fd)
            os.unlink(fresh)
            taken += recycled
    finally:
        acker.join()
    assert acker.exitcode == 0
    assert taken > 0  # it did race the acker for the slot


@pytest.mark.timeout(30)
def test_ack_does_not_hang_on_a_file_someone_else_keeps_locked(q: Queue, home: Path) -> None:
    import fcntl

    q.enqueue("s", "held")
    m = q.dequeue("s")
    assert m is not None and m.receipt is not None
    (leased,) = [p for p in (home / "s" / "inflight").rglob("*") if p.is_file()]
    with open(leased, "rb") as other:  # a foreign process's lock, as the kernel sees it
        fcntl.flock(other, fcntl.LOCK_EX)
        q.ack("s", m.receipt)  # gives up on pooling after about a second, and frees the file
        assert not leased.exists()
    assert q.dequeue("s") is None and q.check() == []


@pytest.mark.skipif(
    not on_memory_file_system("/dev/shm"), reason="needs /dev/shm on tmpfs, as Linux mounts it"
)
def test_on_tmpfs_acked_files_are_freed_not_pooled() -> None:
    home = Path(tempfile.mkdtemp(prefix="ephq-tmpfs-", dir="/dev/shm"))
    try:
        with Queue(home) as q:
            for i in range(20):
                q.enqueue("s", {"secret": f"hunter{i}"})
            for m in q.dequeue_many("s", 20):
                q.ack("s", m.receipt or "")
            q.enqueue("s", "next")
            assert q.check() == []
        assert list((home / "s" / "pool").iterdir()) == []
        files = [p for p in (home / "s").rglob("*") if p.is_file()]
        assert not any(b"hunter" in p.read_bytes() for p in files)
        assert len(_message_files(home, "ready")) == 1
    finally:
        shutil.rmtree(home)


def test_a_refilled_file_a_power_loss_left_in_the_pool_is_delivered_after_the_boot(
    home: Path,
) -> None:
    """What a power loss can leave of an enqueue into a kept file (pool.py): the message's
    bytes under the pooled file's name, its moves undone. The first process after the boot
    (no `scanned-<boot id>` mark) delivers it; within the boot that wrote it, nothing looks."""
    with Queue(home) as q:
        kept_id = q.enqueue("s", {"n": 1, "body": "kept"})
        gone_id = q.enqueue("s", {"n": 2, "body": "gone"})
        taken = q.dequeue("s")
        assert taken is not None and taken.id == kept_id and taken.receipt
        q.ack("s", taken.receipt)
    (slot,) = [p for p in (home / "s" / "pool").iterdir() if pool.is_slot(p.name)]
    (placed,) = _message_files(home, "ready")
    slot.write_bytes(placed.read_bytes())  # the message, under the pooled name only
    placed.unlink()
    marks = [p for p in (home / "s" / "pool").iterdir() if pool.is_boot_mark(p.name)]
    assert len(marks) == 1
    with Queue(home) as q:  # the same boot: pool/ was looked at
        assert q.dequeue("s") is None
    marks[0].rename(marks[0].with_name(pool.SCANNED + "00000000-0000-4000-8000-000000000000"))
    with Queue(home) as q:  # another boot's mark only: this process looks
        got = q.dequeue("s")
        assert got is not None and got.id == gone_id and got.data == {"n": 2, "body": "gone"}
        assert got.receipt
        q.ack("s", got.receipt)
        assert q.check() == []
        left = sorted(p.name for p in (home / "s" / "pool").iterdir() if not pool.is_slot(p.name))
        assert left == [marks[0].name]  # the old boot's mark replaced by this one's


def test_a_settled_name_given_back_meanwhile_is_flushed_whole(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slot names come back: after a producer settles the pool's files with one flush, others
    may take one and an ack give a file back under the same name, unflushed. That one must be
    fsynced, not refilled with a flush of its data alone (pool.py: take_settled)."""
    calls: list[str] = []

    def counted(name: str) -> Callable[[int], None]:
        real = getattr(os, name)

        def flush(fd: int) -> None:
            calls.append(name)
            real(fd)

        return flush

    with Queue(home) as consumer:
        for i in range(20):
            consumer.enqueue("s", {"i": i})
        for m in consumer.dequeue_many("s", 20):
            consumer.ack("s", m.receipt or "")
    monkeypatch.setattr(os, "fsync", counted("fsync"))
    monkeypatch.setattr(os, "fdatasync", counted("fdatasync"))
    with Queue(home) as q:
        q.enqueue("s", "first")  # a process's first enqueue goes the usual way
        calls.clear()
        q.enqueue("s", "refilled")
        # pool/, then the file's data (and perhaps a new directory's flush in between)
        assert calls[0] == "fsync" and calls.count("fdatasync") == 1
        settled = q._backend._stream("s").main.pool._settled  # type: ignore[attr-defined]
        slot = settled[-1][0]  # the next one it takes (name, as flushed)
        away = home / "s" / "tmp" / "taken"
        (home / "s" / "pool" / slot).rename(away)  # taken by another producer, delivered...
        acker = pool.FilePool(
            str(home / "s" / "pool"), lambda path, problem: False, lambda *placed: None
        )
        acker._empties = [slot]  # (its next empty slot)
        acker.give(str(away))  # ...acked, and given back under the same name
        calls.clear()
        q.enqueue("s", "given back")
        assert "fsync" in calls and "fdatasync" not in calls  # (and perhaps a new directory's)
        calls.clear()
        q.enqueue("s", "untouched")
        assert calls.count("fdatasync") == 1
        got = [m.data for m in q.dequeue_many("s", 10)]
        assert got == ["first", "refilled", "given back", "untouched"]


COARSE_CLOCK_DRIVER = r"""
import json, os, sys
from ephq import Queue
from ephq.files.pool import FilePool

home = sys.argv[1]
calls = []
for name in ("fsync", "fdatasync"):
    def counted(fd, real=getattr(os, name), name=name):
        calls.append(name)
        real(fd)
    setattr(os, name, counted)

with Queue(home) as consumer:
    consumer.enqueue_many("s", [{"i": i} for i in range(20)])
    for m in consumer.dequeue_many("s", 20):
        consumer.ack("s", m.receipt)
flushes = []
with Queue(home) as q:
    q.enqueue("s", "first")  # a process's first enqueue goes the usual way
    q.enqueue("s", "refilled")  # settles pool/ with one flush and refills a file
    pool = q._backend._stream("s").main.pool
    # Another process, acking, gives files back to the slots q will take next.
    other = FilePool(pool.dir, lambda path, problem: False, lambda *placed: None)
    for n in range(3):
        slot = pool._settled[-1][0]
        away = os.path.join(home, "s", "tmp", f"taken-{n}")
        os.rename(os.path.join(pool.dir, slot), away)  # taken, written, delivered...
        other._empties = [slot]
        other.give(away)  # ...acked, and given back under the same name, unflushed
        calls.clear()
        q.enqueue("s", f"given back {n}")
        flushes.append(list(calls))
    delivered = [m.data for m in q.dequeue_many("s", 10)]
    problems = [str(p) for p in q.check()]
print(json.dumps({"flushes": flushes, "delivered": delivered, "problems": problems}))
"""


def test_a_file_given_back_to_its_slot_within_one_tick_of_ctime_is_flushed_whole(
    tmp_path: Path,
) -> None:
    """Where timestamps count whole seconds (ext4 with 128-byte inodes; and before Linux 6.13
    ctime comes from a clock that ticks every few milliseconds on any file system), a file
    taken from a settled slot and given back to it at once keeps its inode and ctime. What
    take_settled compares must still tell it changed: its slot's entry is not flushed, so
    refilling it with a flush of data alone could leave the new message under the old
    message's name after a power loss (pool.py)."""
    if shutil.which("unshare") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs unshare and mkfs.ext4")
    mount = tmp_path / "fs"
    mount.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(COARSE_CLOCK_DRIVER)
    image = tmp_path / "fs.img"
    script = (
        f"truncate -s 32M {image} && mkfs.ext4 -q -F -I 128 {image} >/dev/null 2>&1"
        f" && mount -o loop {image} {mount} || exit 77\n"
        f"exec {sys.executable} {driver} {mount}/home"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode == 77:
        pytest.skip(f"cannot mount a loop device here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for flushes in out["flushes"]:
        assert "fsync" in flushes and "fdatasync" not in flushes, out["flushes"]
    assert out["delivered"] == ["first", "refilled"] + [f"given back {n}" for n in range(3)]
    assert out["problems"] == []


def test_what_stands_under_an_old_boot_marks_name_stops_nothing(home: Path) -> None:
    """A directory (or anything but an empty file) named like an earlier boot's mark is not
    ephq's to remove: the look after a boot leaves it, producers go on, check reports it."""
    with Queue(home) as q:
        q.enqueue("s", 1)
    pool_dir = home / "s" / "pool"
    for mark in pool_dir.iterdir():
        if pool.is_boot_mark(mark.name):
            mark.unlink()  # as after a reboot
    planted = pool_dir / (pool.SCANNED + "00000000-0000-4000-8000-000000000000")
    planted.mkdir()
    with Queue(home) as q:
        q.enqueue("s", 2)
        assert [m.data for m in q.dequeue_many("s", 5)] == [1, 2]
        (problem,) = q.check()
        assert problem.kind == "foreign" and problem.path == str(planted)
    assert planted.is_dir()
