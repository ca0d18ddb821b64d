"""Damaged files, leftovers of crashed writers, full disks and refused permissions."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ephq import DiskFull, Queue, StoragePermissionDenied
from ephq.files import recovery, vouch
from tests.conftest import FakeClock, snapshot


def ready_files(home: Path, stream: str = "s") -> list[Path]:
    return sorted(p for p in (home / stream / "ready").rglob("*") if p.is_file())


def quarantined(q: Queue) -> list[str]:
    return [p.path for p in q.check() if p.kind == "quarantined"]


def test_unparseable_message_is_quarantined_and_does_not_wedge(q: Queue, home: Path) -> None:
    q.enqueue("s", "broken")
    q.enqueue("s", "truncated")
    good = q.enqueue("s", "good")
    broken, truncated, _ = ready_files(home)
    broken.write_bytes(b"this is not json")
    cut = truncated.read_bytes()[:20]
    truncated.write_bytes(cut)
    m = q.dequeue("s")
    assert m is not None and m.id == good
    assert q.dead_letters("s") == []  # a file that holds no message is no message to retry
    kept = sorted(Path(p).read_bytes() for p in quarantined(q))
    assert kept == sorted([b"this is not json", cut])  # byte for byte
    assert [p.kind for p in q.check()] == ["quarantined", "quarantined"]


def test_foreign_file_in_ready_is_skipped_reported_and_set_aside(q: Queue, home: Path) -> None:
    q.enqueue("s", 1)
    (home / "s" / "ready" / "notes.txt").write_text("hello")
    m = q.dequeue("s")
    assert m is not None and m.data == 1
    assert q.dequeue("s") is None
    problems = q.check()
    assert [p.kind for p in problems] == ["foreign"]
    repaired = q.check(repair=True)
    assert [(p.kind, p.repaired) for p in repaired] == [("foreign", True), ("quarantined", True)]
    (kept,) = quarantined(q)
    assert Path(kept).read_text() == "hello"


def test_check_repairs_misplaced_unreadable_and_duplicate(q: Queue, home: Path) -> None:
    ids = [q.enqueue("s", i) for i in range(3)]
    first, second, third = ready_files(home)
    wrong_leaf = home / "s" / "ready" / "00000" / "000" / "00"
    wrong_leaf.mkdir(parents=True)
    first.rename(wrong_leaf / first.name)
    second.write_bytes(b"{")
    inflight_copy = home / "s" / "inflight" / "fffff" / "fff"
    inflight_copy.mkdir(parents=True)
    shutil.copy(third, inflight_copy / f"ffffffffffffffff.{ids[2]}.1.abcdef01")

    found = sorted(p.kind for p in q.check())
    assert found == ["duplicate", "misplaced", "unreadable"]
    assert all(not p.repaired for p in q.check())
    repaired = q.check(repair=True)
    assert all(p.repaired for p in repaired)
    assert [p.kind for p in q.check()] == ["quarantined"]
    s = q.stats("s")
    assert (s.ready, s.inflight, s.dlq) == (1, 1, 0)


def test_check_holds_each_name_of_a_leaf_to_its_state(q: Queue, home: Path) -> None:
    """A leaf's names are matched all at once (vouch.py): a name holding a line end, a lease's
    name in delayed/ and a delayed message's in inflight/ are each still found foreign, though
    each holds the record its name's id names."""
    q.enqueue("s", 0)
    (ready,) = ready_files(home)
    record = ready.read_bytes()
    message_id = ready.name.split(".")[0]
    other = "18aaaaaaaaaaaaaaaaaaaaaa"
    planted = [ready.parent / f"{ready.name}\n{other}.0"]
    for state, name in (
        ("delayed", f"ffffffffffffffff.{message_id}.1.abcdef01"),
        ("inflight", f"ffffffffffffffff.{message_id}.1"),
    ):
        leaf = home / "s" / state / "fffff" / "fff"
        leaf.mkdir(parents=True)
        planted.append(leaf / name)
    for path in planted:
        path.write_bytes(record)
    assert sorted((p.kind, p.path) for p in q.check()) == sorted(
        ("foreign", str(p)) for p in planted
    )
    q.check(repair=True)
    assert [p.kind for p in q.check()] == ["quarantined"] * 3
    m = q.dequeue("s")
    assert m is not None and m.id == message_id and q.dequeue("s") is None


def test_stale_tmp_files_are_removed_and_never_delivered(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q.enqueue("s", 1)
    leftover = home / "s" / "tmp" / "18aaaaaaaaaaaaaaaaaaaaaa.0.deadbeef.w"
    leftover.write_bytes(b'{"v":1,"id":"18aaaaaaaaaaaaaaaaaaaaaa","data":')
    assert q.check() == []  # young: its writer may still be at it
    monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)
    assert [p.kind for p in q.check()] == ["stale-tmp"]
    m = q.dequeue("s")  # dequeue cleans up on its way
    assert m is not None and m.data == 1
    assert q.dequeue("s") is None
    assert not leftover.exists()


def test_tmp_file_held_by_a_live_writer_is_left_alone(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    q.enqueue("s", 1)
    monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)
    busy = home / "s" / "tmp" / "18bbbbbbbbbbbbbbbbbbbbbb.0.deadbeef.w"
    fd = os.open(busy, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert q.check() == []
        q.dequeue("s")
        assert busy.exists()
    finally:
        os.close(fd)


def test_interrupted_dead_lettering_is_finished(q: Queue, home: Path) -> None:
    mid = q.enqueue("s", {"x": 1})
    (path,) = ready_files(home)
    # What a process killed between taking the file and writing the dead letter leaves behind.
    path.rename(home / "s" / "tmp" / f"{mid}.3.dying")
    assert [p.kind for p in q.check()] == ["stale-tmp"]
    assert q.dequeue("s") is None
    dead = q.dead_letter("s", mid)
    assert dead.data == {"x": 1}
    assert dead.metadata["dead"]["attempts"] == 3
    assert q.check() == []


def test_committed_batch_is_finished_and_uncommitted_one_dropped(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = q.enqueue_many("s", ["a", "b", "c"])
    files = ready_files(home)
    commit = home / "s" / "tmp" / f"commit-{ids[0]}"
    commit.mkdir()
    for f in files:
        f.rename(commit / f.name)
    staged = home / "s" / "tmp" / "batch-18cccccccccccccccccccccc"
    staged.mkdir()
    (staged / "18cccccccccccccccccccccc.0").write_bytes(b"{}")
    monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)
    got = q.dequeue_many("s", 10)
    assert [m.id for m in got] == ids
    assert not commit.exists() and not staged.exists()


def test_a_batch_both_committed_and_placed_is_delivered_once_and_cleared(
    q: Queue, home: Path
) -> None:
    """A power loss after a batch's moves can keep each file's name in the commit directory
    and in its place (the commit directory was not flushed after them): moving a file onto
    another name of itself does nothing, so recovery must drop those second names itself, or
    the commit would stay in tmp/ for good. Both a message and an imported dead letter."""
    q.enqueue("s", "dead one")
    m = q.dequeue("s")
    assert m is not None and m.receipt is not None
    q.reject("s", m.receipt, "bad")
    ids = q.enqueue_many("s", ["a", "b"])
    commit = home / "s" / "tmp" / f"commit-{ids[0]}.0badc0de"
    commit.mkdir()
    for f in ready_files(home):
        os.link(f, commit / f.name)
    (dead,) = ready_files(home, "s/dlq")
    os.link(dead, commit / f"dlq.{dead.name}")
    with Queue(home) as fresh:  # (q has reaped within the second: it would not look yet)
        got = fresh.dequeue_many("s", 10)
        assert [x.id for x in got] == ids
        assert [x.id for x in fresh.peek("s", 10, dlq=True)] == [m.id]
        assert not commit.exists()
        assert fresh.check() == []


def _fail_writes(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if len(data) > 10:
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_disk_full_is_clear_and_leaves_nothing_partial(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q.enqueue("s", "stored before")
    before = snapshot(home)
    with monkeypatch.context() as m:
        _fail_writes(m, errno.ENOSPC)
        with pytest.raises(DiskFull, match="disk is full") as info:
            q.enqueue("s", "x" * 100)
        assert info.value.exit_code == 6
        with pytest.raises(DiskFull):
            q.enqueue_many("s", ["y" * 100, "z" * 100])
    assert snapshot(home) == before
    got = q.dequeue("s")
    assert got is not None and got.data == "stored before"


def test_permission_denied_is_clear(q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q.enqueue("s", 1)
    before = snapshot(home)
    real_open = os.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> int:
        if "/s/tmp/" in os.fsdecode(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "open", deny)
        with pytest.raises(StoragePermissionDenied, match="permission denied") as info:
            q.enqueue("s", 2)
    assert info.value.exit_code == 5
    assert snapshot(home) == before


def test_damaged_settings_fall_back_to_defaults_and_are_reported(
    q: Queue, home: Path, clock: FakeClock
) -> None:
    q.configure("s", max_attempts=2)
    (home / "s" / "stream.json").write_text("{oops")
    clock.advance(1)
    assert q.config("s").max_attempts == 5
    assert [p.kind for p in q.check()] == ["bad-config"]
    q.check(repair=True)
    assert q.check() == []


def test_hand_edited_file_with_reordered_keys_still_gives_its_data(q: Queue, home: Path) -> None:
    q.enqueue("s", 1)
    (path,) = ready_files(home)
    record = json.loads(path.read_bytes())
    path.write_text(
        json.dumps({"data": {"k": [1, 2]}, "meta": {}, "v": 1, "id": record["id"], "stream": "s"})
    )
    m = q.dequeue("s")
    assert m is not None and m.data == {"k": [1, 2]}
    assert json.loads(m.data_json) == {"k": [1, 2]}


def test_purge_empties_at_once_and_a_sweeper_deletes_in_the_background(
    realq: Queue, home: Path
) -> None:
    ids = realq.enqueue_many("s", list(range(300)))
    realq.dequeue_many("s", 10)  # some in flight
    realq.enqueue("s", "later", delay=3600)
    leaf = ready_files(home)[0].parent
    (leaf / "notes.txt").write_text("not a message")
    assert realq.purge("s") == len(ids) + 1
    assert realq.stats("s")[1:4] == (0, 0, 0)  # empty at once
    fresh = realq.enqueue("s", "after")  # and usable at once
    m = realq.dequeue("s")
    assert m is not None and m.id == fresh
    tmp = home / "s" / "tmp"
    deadline = time.monotonic() + 60
    while any(p.name.startswith("purge-") for p in tmp.iterdir()):
        assert time.monotonic() < deadline, "the sweeper did not finish"
        time.sleep(0.02)
    kept = [p for p in realq.check() if p.kind == "quarantined"]
    assert [Path(p.path).read_text() for p in kept] == ["not a message"]


def test_a_purge_whose_sweeper_died_is_finished_a_share_at_a_time(
    q: Queue, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ephq.files import sweep

    q.enqueue_many("s", list(range(600)))
    monkeypatch.setattr(sweep, "spawn", lambda stream_dir, trees: True)  # started, then died
    assert q.purge("s") == 600
    (aside,) = [p for p in (home / "s" / "tmp").iterdir() if p.name.endswith("-ready")]
    monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)
    looks = 0
    while aside.exists():
        q.stats("s")  # each look deletes a share
        looks += 1
        assert looks < 10
    assert looks >= 2  # shared out: 600 files, 256 a look
    assert q.check() == []


@pytest.mark.parametrize("helpers", ["answering", "failing", "dying", "unstartable"])
def test_check_shared_with_helper_processes_finds_the_same(
    q: Queue, home: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, helpers: str
) -> None:
    """A large stream's files are read by helper processes too (vouch.py): what check finds and
    repairs is the same with helpers, and with helpers that fail."""
    ids = []
    for i in range(40):  # a leaf each: 50 ms apart
        ids.append(q.enqueue("s", {"n": i}))
        clock.advance(0.05)
    files = ready_files(home)
    wrong_leaf = home / "s" / "ready" / "00000" / "000" / "00"
    wrong_leaf.mkdir(parents=True)
    files[3].rename(wrong_leaf / files[3].name)
    files[7].write_bytes(b'{"v":1,')
    files[11].write_bytes(files[12].read_bytes())  # another message's record
    (files[15].parent / "notes.txt").write_text("hello")
    os.symlink("/etc/passwd", files[19].parent / f"{ids[19][:16]}00000000.0")
    inflight_copy = home / "s" / "inflight" / "fffff" / "fff"
    inflight_copy.mkdir(parents=True)
    shutil.copy(files[23], inflight_copy / f"ffffffffffffffff.{ids[23]}.1.abcdef01")
    alone = [(p.kind, p.path, p.detail) for p in q.check()]
    assert sorted(kind for kind, _, _ in alone) == [
        "duplicate",
        "foreign",
        "foreign",
        "id-mismatch",
        "misplaced",
        "unreadable",
    ]

    ran = home.parent / "helpers-ran"
    code = f"open({str(ran)!r}, 'a').write('ran\\n'); " + vouch.HELPER_CODE
    if helpers == "failing":
        code = f"open({str(ran)!r}, 'a').write('ran\\n'); print('not a pickle')"
    if helpers == "dying":  # answers its first leaf, then exits
        code = code.replace(
            "from ephq.files.vouch import serve; serve()",
            "import pickle; from ephq.files.vouch import vouch; "
            "i, leaf = pickle.load(sys.stdin.buffer); "
            "pickle.dump((i, vouch(leaf)), sys.stdout.buffer)",
        )
        assert code != f"open({str(ran)!r}, 'a').write('ran\\n'); " + vouch.HELPER_CODE
    monkeypatch.setattr(vouch, "HELPER_CODE", code)
    monkeypatch.setattr(vouch, "READ_HERE", False)
    monkeypatch.setattr(vouch, "_cpus", lambda: 3)  # two helpers, and this process
    if helpers == "unstartable":
        monkeypatch.setattr(sys, "executable", str(home.parent / "no-such-python"))
    assert [(p.kind, p.path, p.detail) for p in q.check()] == alone
    assert ran.read_text() == "ran\n" * 2 if helpers != "unstartable" else not ran.exists()
    assert all(p.repaired for p in q.check(repair=True))
    assert [p.kind for p in q.check()] == ["quarantined"] * 4
    delivered = {m.id for m in q.dequeue_many("s", 100)}
    # Lost to damage: 7 and 11; 23 is kept where it is furthest along, leased for ever.
    assert delivered == set(ids) - {ids[7], ids[11], ids[23]}


def test_a_home_another_process_makes_meanwhile_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes starting on a new home at once: one makes it between another's two looks (is
    it a directory? is anything there?). That one must use it, not call it "not a directory"
    (four benchmark producers met this). The other process's mkdir is made to land there."""
    home = tmp_path / "home"
    real_isdir = os.path.isdir
    looks: list[str] = []

    def made_after_the_look(path: Any) -> bool:
        seen = real_isdir(path)
        if os.fspath(path) == str(home) and not looks:
            looks.append("home")
            os.mkdir(home)  # the other process, just after this one looked
        return seen

    monkeypatch.setattr(os.path, "isdir", made_after_the_look)
    with Queue(home) as q:
        q.enqueue("s", 1)
    monkeypatch.undo()
    assert looks == ["home"]
    with Queue(home) as q:
        got = q.dequeue("s")
        assert got is not None and got.data == 1


@pytest.mark.timeout(60)
def test_a_lease_directory_removed_under_a_consumer_is_made_again(q: Queue, home: Path) -> None:
    """A consumer takes a rename into its last lease directory that finds nothing for a race
    lost to another consumer (no lstat to tell); when the directory was removed instead, a run
    of such losses makes it look and make the directory again: nothing is passed over for good,
    and the claim does not spin."""
    for n in range(30):
        q.enqueue("s", n)
    first = q.dequeue("s", visibility=30)  # the fake clock stands still: every lease goes here
    assert first is not None and first.receipt
    q.ack("s", first.receipt)
    (lease_dir,) = [p for p in (home / "s" / "inflight").glob("*/*") if p.is_dir()]
    lease_dir.rmdir()
    got = []
    while (m := q.dequeue("s", visibility=30)) is not None:
        assert m.receipt
        q.ack("s", m.receipt)
        got.append(m.data)
    assert sorted(got) == list(range(1, 30))
    assert q.check() == []
