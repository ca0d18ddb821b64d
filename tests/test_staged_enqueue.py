"""A durable enqueue is staged: written in tmp/ under a name carrying its CRC-32, fsynced, then
moved into place unflushed (store.py, recovery.py). What a power loss can leave of that, laid
out as the crash-state explorer (tests/test_crash_states.py) finds it, is placed or dropped."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from ephq import Queue
from ephq.files import recovery

S = "s"


def _message_file(home: Path) -> Path:
    (path,) = [p for p in (home / S / "ready").rglob("*") if p.is_file()]
    return path


def _staged_path(home: Path, placed: Path) -> Path:
    crc = zlib.crc32(placed.read_bytes())
    return home / S / "tmp" / f"{placed.name}.0badc0de.{crc:08x}.staged"


def _enqueued(tmp_path: Path) -> tuple[Path, str, Path]:
    home = tmp_path / "home"
    with Queue(home) as q:
        message_id = q.enqueue(S, {"n": 1})
    return home, message_id, _message_file(home)


def test_a_whole_staged_file_whose_move_was_undone_is_placed(tmp_path: Path) -> None:
    home, message_id, placed = _enqueued(tmp_path)
    staged = _staged_path(home, placed)
    placed.rename(staged)  # the power loss kept the staged name, not the move into place
    with Queue(home) as q:
        assert [p.kind for p in q.check()] == ["stale-tmp"]
        m = q.dequeue(S)
        assert m is not None and (m.id, m.data) == (message_id, {"n": 1})
        assert q.check() == []
    assert not staged.exists()


def test_a_staged_file_also_in_place_is_delivered_once(tmp_path: Path) -> None:
    home, message_id, placed = _enqueued(tmp_path)
    staged = _staged_path(home, placed)
    os.link(placed, staged)  # both names kept: the staged one is dropped
    with Queue(home) as q:
        got = q.dequeue_many(S, 10)
        assert [m.id for m in got] == [message_id]
        assert q.check() == []
    assert not staged.exists()


def test_a_staged_file_also_named_in_the_pool_is_placed_and_never_reused(
    tmp_path: Path,
) -> None:
    """The producer took the file from the pool; a power loss kept the pool's name too. The
    message is placed, and no producer writes into it through the pool's name."""
    home, message_id, placed = _enqueued(tmp_path)
    staged = _staged_path(home, placed)
    placed.rename(staged)
    os.link(staged, home / S / "pool" / "7.free")
    with Queue(home) as q:
        m = q.dequeue(S)
        assert m is not None and m.id == message_id
        assert m.receipt is not None
        for i in range(3):
            q.enqueue(S, {"after": i})  # may take pooled files: never that one
        q.release(S, m.receipt)
        got = [(x.id == message_id, x.data) for x in q.dequeue_many(S, 10)]
        assert got == [(True, {"n": 1})] + [(False, {"after": i}) for i in range(3)]


def test_a_torn_staged_file_is_never_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that do not match the name's CRC-32 (a power loss before the fsync): a young one
    may be a writer's still, so it is left and not reported; past the grace it is removed."""
    home, _, placed = _enqueued(tmp_path)
    staged = _staged_path(home, placed)
    whole = placed.read_bytes()
    placed.unlink()
    staged.write_bytes(whole[: len(whole) // 2])
    with Queue(home) as q:
        assert q.dequeue(S) is None
        assert q.check() == []
        assert staged.exists()
        monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)
        assert [p.kind for p in q.check()] == ["stale-tmp"]
        q.check(repair=True)
        assert q.check() == []
        assert not staged.exists()
        assert q.dequeue(S) is None


def test_a_staged_name_ephq_does_not_write_is_foreign(tmp_path: Path) -> None:
    home, _, _ = _enqueued(tmp_path)
    bad = home / S / "tmp" / "not-a-message.0badc0de.12345678.staged"
    bad.write_text("{}")
    with Queue(home) as q:
        assert [(p.kind, p.path) for p in q.check()] == [("foreign", str(bad))]
        assert q.dequeue(S) is not None
    assert bad.exists()  # recovery leaves what is not its own


def test_export_and_purge_count_what_a_crash_left_staged(tmp_path: Path) -> None:
    home, message_id, placed = _enqueued(tmp_path / "a")
    placed.rename(_staged_path(home, placed))
    with Queue(home) as q:
        assert [(e.id, e.state) for e in q.export(S)] == [(message_id, "ready")]
    home, _, placed = _enqueued(tmp_path / "b")
    placed.rename(_staged_path(home, placed))
    with Queue(home) as q:
        assert q.purge(S) == 1
        assert q.dequeue(S) is None
        assert q.check() == []
