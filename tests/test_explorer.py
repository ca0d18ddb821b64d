"""The crash-state explorer's models, on plain os calls: what each one lets a crash leave.

The scenarios of test_crash_states.py trust these models to show every state a power loss can
leave; here each model is held to what the file systems ephq names do (tests/crashstates.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.crashstates import DATA_LOSS, PROCESS, SECTOR, STRICT, TORN, Explorer, Image, Recorder


def _states(root: Path, calls: list[tuple[str, ...]]) -> dict[str, list[dict[str, bytes]]]:
    """Run calls under root while recording; per model, each crash state as {path: bytes}."""
    recorder = Recorder(str(root))
    with recorder.recording():
        for call in calls:
            _run(root, call)
    explorer = Explorer(recorder)
    found: dict[str, list[dict[str, bytes]]] = {}
    for _, model, image in explorer.states():
        found.setdefault(model, []).append(_files(explorer, image))
    explorer.assert_complete()
    return found


def _run(root: Path, call: tuple[str, ...]) -> None:
    what, *args = call
    if what == "write new":  # name, bytes as text
        fd = os.open(root / args[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, args[1].encode())
        _fds[args[0]] = fd
    elif what == "overwrite":  # name, bytes as text: in place, from the start
        fd = os.open(root / args[0], os.O_WRONLY)
        os.pwrite(fd, args[1].encode(), 0)
        _fds[args[0]] = fd
    elif what in ("fsync", "fdatasync"):
        getattr(os, what)(_fds[args[0]])
    elif what == "close":
        os.close(_fds.pop(args[0]))
    elif what == "rename":
        os.rename(root / args[0], root / args[1])
    else:
        raise AssertionError(what)


_fds: dict[str, int] = {}


def _files(explorer: Explorer, image: Image) -> dict[str, bytes]:
    return {path: explorer.model.contents[digest] for path, kind, digest, _ in image if kind == "f"}


def _flushed_file(root: Path, name: str, data: bytes) -> None:
    """A file whose bytes, size and name were flushed before recording began (as the
    explorer takes the starting tree)."""
    (root / name).write_bytes(data)


def test_fsync_keeps_a_new_files_name_and_fdatasync_does_not(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # fsync: the name the file had when it was flushed sticks with its bytes.
    synced = _states(
        tmp_path / "a", [("write new", "m", "message"), ("fsync", "m"), ("close", "m")]
    )
    assert synced[STRICT][-1] == {"m": b"message"}
    # fdatasync: the bytes are flushed, but a power loss may leave no name for them.
    datasynced = _states(
        tmp_path / "b", [("write new", "m", "message"), ("fdatasync", "m"), ("close", "m")]
    )
    assert datasynced[STRICT][-1] == {}
    assert datasynced[DATA_LOSS][-1] == {"m": b"message"}


def test_an_unflushed_overwrite_can_be_torn_at_a_sector(tmp_path: Path) -> None:
    old, new = b"o" * (2 * SECTOR), "n" * (2 * SECTOR)
    root = tmp_path / "home"
    root.mkdir()
    _flushed_file(root, "m", old)
    found = _states(root, [("overwrite", "m", new), ("fdatasync", "m"), ("close", "m")])
    torn = {"m": b"n" * SECTOR + b"o" * SECTOR}
    assert torn in found[TORN]
    # Neither a process crash nor a power loss after the flush leaves anything but whole bytes.
    assert torn not in found[PROCESS] and torn not in found[DATA_LOSS]
    assert found[STRICT][-1] == {"m": new.encode()}
    assert found[DATA_LOSS][0] == {"m": old}


def test_a_one_sector_write_is_never_torn(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    _flushed_file(root, "m", b"old")
    found = _states(root, [("overwrite", "m", "new"), ("close", "m")])
    assert all(state["m"] in (b"old", b"new") for states in found.values() for state in states)
    # Writeback may flush bytes nobody flushed: the power-loss models show the new bytes too.
    assert {"m": b"new"} in found[TORN]


def test_a_rename_after_fdatasync_may_be_undone_and_the_bytes_stay_under_the_old_name(
    tmp_path: Path,
) -> None:
    root = tmp_path / "home"
    root.mkdir()
    (root / "pool").mkdir()
    (root / "ready").mkdir()
    _flushed_file(root, "pool/slot", b" " * 64)
    found = _states(
        root,
        [
            ("overwrite", "pool/slot", "message"),
            ("fdatasync", "pool/slot"),
            ("rename", "pool/slot", "ready/m"),
            ("close", "pool/slot"),
        ],
    )
    assert found[PROCESS][-1] == {"ready/m": b"message" + b" " * 57}
    assert {"pool/slot": b"message" + b" " * 57} in found[STRICT]
