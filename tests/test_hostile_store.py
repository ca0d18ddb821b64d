"""A store that survives what the world leaves in it: stray files, links, directories where files
belong, and files that are empty, garbage, truncated, oversized or unreadable, in every place of
the layout.

Each case plants one such thing in a stream that holds ready, expired, dead and pooled messages,
then runs every kind of operation, each with a fresh Queue (as separate processes would).
Invariants:

- every operation returns (pytest-timeout ends a hang), and none raises but where the case says;
- good messages keep flowing: what was enqueued is delivered, with its own data, and nothing else;
- nothing outside the home is read (atime, which relatime updates on a read of a file whose atime
  is older than its mtime), written, truncated, renamed or deleted;
- after `check --repair` the store is clean, and the foreign thing is in the quarantine, byte for
  byte (a regular file with another name is dropped instead: no byte is lost).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ephq import Queue, StorageError
from ephq.files import recovery
from tests.test_cli import ephq, ok

S = "s"
RECORD = (
    '{{"v":1,"id":"{id}","stream":"s","enqueued_at":"2026-01-01T00:00:00.000000Z",'
    '"meta":{{}},"data":{data}}}'
)


@dataclass
class Store:
    home: Path
    outside: Path
    good: dict[str, Any]  # messages that must be delivered, by id

    @property
    def stream(self) -> Path:
        return self.home / S

    def leaf(self, state: str = "ready") -> Path:
        """A leaf of a state tree that holds messages now."""
        files = sorted(p for p in (self.stream / state).rglob("*") if p.is_file())
        assert files, f"no {state} message to find a leaf by"
        return files[0].parent

    def sibling(self, state: str = "ready") -> str:
        """A message's name that belongs in leaf(state) and sorts first there."""
        first = sorted(p.name for p in self.leaf(state).iterdir())[0]
        if state.endswith("ready"):
            return first[:16] + "00000000.0"
        return first[:17] + first[17:33] + "00000000.1.00000000"

    def victim(self, content: bytes = b"do not touch\n", name: str = "victim") -> Path:
        path = self.outside / name
        path.write_bytes(content)
        return path

    def victim_dir(self) -> Path:
        path = self.outside / "vdir"
        path.mkdir(exist_ok=True)
        (path / "inner.txt").write_text("inside")
        (path / "18aaaaaaaaaaaaaa00000000.0").write_text(
            RECORD.format(id="18aaaaaaaaaaaaaa00000000", data='"outside"')
        )
        return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A stream with ready, expiring, delayed, dead and pooled messages, and a folder outside."""
    monkeypatch.setattr(recovery, "TMP_GRACE_NS", 0)  # scrap in tmp/ is removed at once
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    good: dict[str, Any] = {}
    with Queue(home) as q:
        q.configure(S, max_attempts=3)
        for item in ({"ready": 0}, {"ready": 1}, {"ready": 2}, "dead", "expiring"):
            good[q.enqueue(S, item)] = item
        pooled = {q.enqueue(S, {"pooled": i}) for i in range(2)}
        for m in q.dequeue_many(S, 10):
            receipt = m.receipt or ""
            if m.id in pooled:
                q.ack(S, receipt)  # its file goes to the pool
            elif m.data == "dead":
                q.reject(S, receipt, "planted")  # redriven by the run, then delivered
            elif m.data == "expiring":
                q.extend(S, receipt, 0.001)  # the lease ends at once: the reaper's to return
            else:
                q.release(S, receipt)
        q.enqueue(S, "delayed", delay=3600)  # not due during the run
    return Store(home, outside, good)


Outside = dict[str, tuple[int, int, int]]


def watch_outside(root: Path) -> list[str]:
    """Every entry under root, each file and directory given an atime older than its mtime, so
    that a read of it (relatime) shows as a new atime."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in dirnames + filenames]
    for path in [*paths, str(root)]:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode):
            os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    return paths


def outside_now(root: Path, paths: list[str]) -> tuple[Outside, set[str], dict[str, bytes]]:
    """Stat of every watched entry (before anything reads it), what is there, and the bytes."""
    stats = {}
    for path in [*paths, str(root)]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        stats[path] = (st.st_mode, st.st_mtime_ns, st.st_atime_ns)
    present = {os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs}
    contents = {}
    for path in present:
        if stat.S_ISREG(os.lstat(path).st_mode):
            with open(path, "rb") as handle:
                contents[path] = handle.read()
        elif stat.S_ISLNK(os.lstat(path).st_mode):
            contents[path] = os.fsencode(os.readlink(path))
    return stats, present, contents


def run_everything(home: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every kind of operation, each from a fresh Queue: (delivered, enqueued during the run)."""
    delivered: dict[str, Any] = {}
    with Queue(home) as q:
        q.stats(S)
        q.stats()
        q.peek(S, 10)
        q.peek(S, 10, dlq=True)
        q.dead_letters(S)
    with Queue(home) as q:
        enqueued = {q.enqueue(S, "new"): "new"}
        for i, mid in enumerate(q.enqueue_many(S, ["batch-0", "batch-1"])):
            enqueued[mid] = f"batch-{i}"
    with Queue(home) as q:
        q.redrive(S)
        q.configure(S, visibility=30)
    for _ in range(50):
        with Queue(home) as q:
            got = q.dequeue_many(S, 3)
            if not got:
                break
            for m in got:
                assert delivered.get(m.id, m.data) == m.data
                delivered[m.id] = m.data
                if len(delivered) % 2:
                    q.ack(S, m.receipt or "")
                else:  # extend, then ack from another process
                    q.extend(S, m.receipt or "", 60)
                    with Queue(home) as other:
                        other.ack(S, m.receipt or "")
    else:
        raise AssertionError("the drain did not end")
    with Queue(home) as q:
        q.dequeue(S, dlq=True)
        q.purge_dead_letters(S)
        q.purge(S)
    wait_for_sweeper(home / S)
    return delivered, enqueued


def wait_for_sweeper(stream: Path) -> None:
    """Until purge's sweeper (a detached process) has deleted what purge set aside."""
    end = time.monotonic() + 60
    while any(p.name.startswith("purge-") for p in (stream / "tmp").iterdir()):
        assert time.monotonic() < end, "the sweeper did not finish"
        time.sleep(0.02)


def in_quarantine(stream: Path) -> list[Path]:
    where = stream / "quarantine"
    return sorted(where.iterdir()) if where.is_dir() else []


# -- the cases -----------------------------------------------------------------------------
# Each plants one thing and returns its path (None when it leaves nothing to find afterwards).

Plant = Callable[[Store], Path | None]


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _staged_name(content: bytes) -> str:
    """The name a staged enqueue of content would have (recovery.py)."""
    return f"18aaaaaaaaaaaaaa00000000.0.0badc0de.{zlib.crc32(content):08x}.staged"


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    (path / "x").write_text("in a directory")
    return path


def _valid(name: str) -> bytes:
    """A valid record for the message a ready or timed name names."""
    fields = name.split(".")
    mid = fields[0] if len(fields[0]) == 24 else fields[1]
    return RECORD.format(id=mid, data='"outside"').encode()


def _too_deep(path: Path) -> Path:
    """A record for its name whose data no JSON parser in Python can read: not a traceback."""
    fields = path.name.split(".")
    data = "[" * 100_000 + "]" * 100_000
    return _file(path, RECORD.format(id=fields[0], data=data).encode())


def _oversized(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(70 << 20)  # sparse: 70 MiB of nothing, past what a message file holds
    return path


def _hard_link(s: Store, path: Path, content: bytes) -> None:
    """A second name of a file outside: dropped from the store (unlinked), never written."""
    os.link(s.victim(content), path)


CASES: dict[str, Plant] = {
    # ready/
    "ready: stray file": lambda s: _file(s.leaf() / "notes.txt", b"hello"),
    "ready: .DS_Store": lambda s: _file(s.leaf() / ".DS_Store", b"\x00\x01"),
    "ready: empty message file": lambda s: _file(s.leaf() / s.sibling(), b""),
    "ready: garbage message file": lambda s: _file(s.leaf() / s.sibling(), b"\xff garbage"),
    "ready: truncated message file": lambda s: _file(s.leaf() / s.sibling(), b'{"v":1,"id":'),
    "ready: oversized message file": lambda s: _oversized(s.leaf() / s.sibling()),
    "ready: message nested past the parser's depth": lambda s: _too_deep(s.leaf() / s.sibling()),
    "ready: message-named FIFO": lambda s: _fifo(s.leaf() / s.sibling()),
    "ready: message-named directory": lambda s: _dir(s.leaf() / s.sibling()),
    "ready: a message's name and a line end and another": lambda s: _file(
        s.leaf() / f"{s.sibling()}\n{s.sibling()[:-1]}1", _valid(s.sibling())
    ),
    "ready: link to a message outside": lambda s: _link(
        s.leaf() / s.sibling(), s.victim(_valid(s.sibling()))
    ),
    "ready: link to any file outside": lambda s: _link(s.leaf() / s.sibling(), s.victim()),
    "ready: link to a directory outside": lambda s: _link(s.leaf() / s.sibling(), s.victim_dir()),
    "ready: hard link to a file outside": lambda s: _hard_link(
        s, s.leaf() / s.sibling(), b"not a message"
    ),
    "ready: leaf replaced by a link": lambda s: _replace_by_link(s, s.leaf()),
    "ready: level replaced by a file": lambda s: _replace_by_file(s, s.leaf().parent),
    "ready: top level replaced by a link": lambda s: _replace_by_link(s, s.leaf().parent.parent),
    # delayed/ and inflight/
    "delayed: stray file": lambda s: _file(s.leaf("delayed") / "notes.txt", b"hello"),
    "delayed: a lease's name": lambda s: _file(
        s.leaf("delayed") / s.sibling("delayed"), _valid(s.sibling("delayed"))
    ),
    "delayed: link to a file outside": lambda s: _link(
        s.leaf("delayed") / "0000000000000001.18aaaaaaaaaaaaaa00000000.0", s.victim()
    ),
    "inflight: link to a message outside": lambda s: _link(
        _inflight_leaf(s) / "0000000000000001.18aaaaaaaaaaaaaa00000000.1.00000000",
        s.victim(_valid("18aaaaaaaaaaaaaa00000000.0")),
    ),
    "inflight: stray directory": lambda s: _dir(_inflight_leaf(s) / "junk"),
    # tmp/
    "tmp: stray file": lambda s: _file(s.stream / "tmp" / "notes.txt", b"hello"),
    "tmp: commit link to a directory outside": lambda s: _link(
        s.stream / "tmp" / "commit-18aaaaaaaaaaaaaa00000000", s.victim_dir()
    ),
    "tmp: dying link to a message outside": lambda s: _link(
        s.stream / "tmp" / "18aaaaaaaaaaaaaa00000000.1.dying",
        s.victim(_valid("18aaaaaaaaaaaaaa00000000.0")),
    ),
    "tmp: dying directory": lambda s: _dir(s.stream / "tmp" / "18aaaaaaaaaaaaaa00000000.1.dying"),
    "tmp: dying file with a non-ASCII digit": lambda s: _file(
        s.stream / "tmp" / "18aaaaaaaaaaaaaa00000000.\u00b2.dying", b"x"
    ),
    "ready: message name with a non-ASCII digit": lambda s: _file(
        s.leaf() / (s.sibling()[:25] + "\u0663"), b"x"
    ),
    "tmp: purge link to a directory outside": lambda s: _scrap(
        _link(s.stream / "tmp" / "purge-x-ready", s.victim_dir())
    ),
    "tmp: write link to a file outside": lambda s: _scrap(
        _link(s.stream / "tmp" / "18aaaaaaaaaaaaaa00000000.0.00000000.w", s.victim())
    ),
    "tmp: batch holding a link outside": lambda s: _scrap(_batch_with_link(s)),
    "tmp: staged link to a message outside": lambda s: _link(
        s.stream / "tmp" / _staged_name(_valid("18aaaaaaaaaaaaaa00000000.0")),
        s.victim(_valid("18aaaaaaaaaaaaaa00000000.0")),
    ),
    "tmp: staged directory": lambda s: _dir(s.stream / "tmp" / _staged_name(b"")),
    # pool/
    "pool: link to a file outside": lambda s: _link(s.stream / "pool" / "7.free", s.victim()),
    "pool: directory": lambda s: _dir(s.stream / "pool" / "8.free"),
    "pool: FIFO": lambda s: _fifo(s.stream / "pool" / "9.free"),
    "pool: hard link to a file outside": lambda s: _hard_link(
        s, s.stream / "pool" / "10.free", b"keep me"
    ),
    "pool: stray file": lambda s: _file(s.stream / "pool" / "notes.txt", b"hello"),
    "pool: oversized file": lambda s: _file(s.stream / "pool" / "11.free", bytes(40000)),
    # the dead letters
    "dlq: garbage dead letter": lambda s: _file(
        s.leaf("dlq/ready") / s.sibling("dlq/ready"), b"garbage"
    ),
    "dlq: link to a message outside": lambda s: _link(
        s.leaf("dlq/ready") / s.sibling("dlq/ready"), s.victim(_valid(s.sibling("dlq/ready")))
    ),
    "dlq: stray file": lambda s: _file(s.leaf("dlq/ready") / "notes.txt", b"hello"),
    "dlq: pool link": lambda s: _link(s.stream / "dlq" / "pool" / "3.free", s.victim()),
    "dlq: commit link": lambda s: _link(
        s.stream / "dlq" / "tmp" / "commit-18aaaaaaaaaaaaaa00000000", s.victim_dir()
    ),
    # the stream's own directory
    "stream: ready/ is a link": lambda s: _replace_by_link(s, s.stream / "ready"),
    "stream: tmp/ is a link": lambda s: _replace_by_link(s, s.stream / "tmp"),
    "stream: pool/ is a link": lambda s: _replace_by_link(s, s.stream / "pool"),
    "stream: dlq/ is a file": lambda s: _replace_by_file(s, s.stream / "dlq"),
    "stream: bell is a link": lambda s: _replace_by_link(s, s.stream / "bell", s.victim()),
    "stream: stream.json is a link": lambda s: _replace_by_link(
        s, s.stream / "stream.json", s.victim(b'{"max_attempts": 1, "visibility": 0.001}')
    ),
    "stream: lock is a link": lambda s: _replace_by_link(s, s.stream / "lock", s.victim()),
    "stream: census is a link": lambda s: _link(s.stream / "census", s.victim()),
    "stream: stray file": lambda s: _file(s.stream / "notes.txt", b"hello"),
}


# A hard link is a name of the file in the home as much as outside it: nothing tells the two
# apart, so ephq reads it like any message file (a power loss can leave a message named twice,
# and it must be delivered); it never writes through it, and drops that name.
SECOND_NAMES = {"ready: hard link to a file outside"}


def _scrap(path: Path) -> None:
    """Planted under a name recovery removes: it is gone afterwards, and that is right."""
    del path


def _inflight_leaf(s: Store) -> Path:
    leaf = s.stream / "inflight" / "00000" / "000"
    leaf.mkdir(parents=True, exist_ok=True)
    return leaf


def _batch_with_link(s: Store) -> Path:
    batch = s.stream / "tmp" / "batch-18aaaaaaaaaaaaaa00000000"
    batch.mkdir()
    (batch / "18aaaaaaaaaaaaaa00000000.0").symlink_to(s.victim())
    return batch


def _replace_by_link(s: Store, path: Path, target: Path | None = None) -> Path:
    """path becomes a link to outside: to a copy of what it was, or to target."""
    if target is None:
        target = s.outside / f"was-{path.name}"
        path.rename(target)
        _drop_good_under(s, target)
    else:
        path.unlink()
    path.symlink_to(target)
    return path


def _replace_by_file(s: Store, path: Path) -> Path:
    """path (a directory) becomes a regular file; what it held goes outside."""
    target = s.outside / f"was-{path.name}"
    path.rename(target)
    _drop_good_under(s, target)
    path.write_text("a file where a directory was")
    return path


def _drop_good_under(s: Store, moved: Path) -> None:
    """Messages moved out of the home are no longer the store's to deliver."""
    for p in moved.rglob("*"):
        for mid in list(s.good):
            if p.name.startswith(mid) or mid in p.name:
                del s.good[mid]


def _fingerprint(path: Path) -> tuple[str, Any]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "link", os.readlink(path)
    if stat.S_ISDIR(st.st_mode):
        return "dir", sorted(p.name for p in path.iterdir())
    if stat.S_ISFIFO(st.st_mode):
        return "fifo", None
    return "file", (st.st_size, path.read_bytes() if st.st_size < 1 << 20 else b"")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_store_keeps_working(case: str, store: Store) -> None:
    planted = CASES[case](store)
    before = None if planted is None else _fingerprint(planted)
    _, present, contents = outside_now(store.outside, [])
    watched = watch_outside(store.outside)
    stats, _, _ = outside_now(store.outside, watched)
    watch_outside(store.outside)  # outside_now read the files: make a read show again

    delivered, enqueued = run_everything(store.home)

    expected = {**store.good, **enqueued}
    wrong = {k: v for k, v in delivered.items() if k in expected and expected[k] != v}
    assert not wrong, f"delivered with the wrong data: {wrong}"
    assert set(expected) <= set(delivered), f"not delivered: {set(expected) - set(delivered)}"
    assert set(delivered) <= set(expected), f"delivered, not ours: {set(delivered) - set(expected)}"
    after, now_present, now_contents = outside_now(store.outside, watched)
    if case in SECOND_NAMES:  # a name in the home: read like any file, never written
        after = {k: (*v[:2], 0) for k, v in after.items()}
        stats = {k: (*v[:2], 0) for k, v in stats.items()}
    assert (after, now_present, now_contents) == (stats, present, contents), (
        "something outside the home was read or changed"
    )

    with Queue(store.home) as q:
        q.check(repair=True)
        left = [p for p in q.check() if p.kind != "quarantined"]
        assert left == [], left
    if planted is not None:
        if os.path.lexists(planted):  # made anew in its place, as ephq makes it
            assert _fingerprint(planted) != before, f"{planted} is still there after repair"
        kept = [_fingerprint(p) for p in in_quarantine(store.stream)]
        assert before in kept, f"not kept in the quarantine: {before}; there: {kept}"


# -- the home and the stream's own path ----------------------------------------------------


def test_a_link_in_place_of_a_stream_is_never_followed(store: Store) -> None:
    fake = store.outside / "elsewhere"
    with Queue(fake) as q:
        q.enqueue("x", "outside")  # a real stream, outside the home
    (store.home / "x").symlink_to(fake / "x")
    _, present, contents = outside_now(store.outside, [])
    watched = watch_outside(store.outside)
    stats, _, _ = outside_now(store.outside, watched)
    watch_outside(store.outside)
    with Queue(store.home) as q:
        assert [st.stream for st in q.stats()] == [S]
        for call in (
            lambda: q.enqueue("x", 1),
            lambda: q.dequeue("x"),
            lambda: q.stats("x"),
            lambda: q.purge("x"),
        ):
            with pytest.raises(
                StorageError,
                match=r"/x is a symbolic link, not a stream's directory \(ephq follows no link",
            ):
                call()
        assert [p.kind for p in q.check()] == ["foreign"]
        q.check(repair=True)
        assert q.check() == []
    assert outside_now(store.outside, watched) == (stats, present, contents)
    (kept,) = (store.home / ".quarantine").iterdir()
    assert kept.is_symlink() and kept.readlink() == fake / "x"
    with Queue(store.home) as q:  # the name is free again
        q.enqueue("x", "inside")
        m = q.dequeue("x")
        assert m is not None and m.data == "inside"


def test_a_file_in_place_of_a_stream_gives_a_clear_error(store: Store) -> None:
    (store.home / "t").write_text("notes")
    with Queue(store.home) as q:
        with pytest.raises(StorageError, match=r"/t is a file, not a stream's directory"):
            q.enqueue("t", 1)
        assert [st.stream for st in q.stats()] == [S]
        q.check(repair=True)
        q.enqueue("t", 1)
    (kept,) = (store.home / ".quarantine").iterdir()
    assert kept.read_text() == "notes"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_an_unreadable_message_file_is_set_aside() -> None:
    """As a user that cannot read one file (root reads everything, so a child drops to nobody)."""
    base = Path(tempfile.mkdtemp(prefix="ephq-nobody-"))  # not under pytest's root-only tmp
    base.chmod(0o755)
    home = base / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = _unreadable_as_nobody(home)
        except BaseException as exc:
            print(f"as nobody: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    shutil.rmtree(base)
    assert os.waitstatus_to_exitcode(status) == 0


def _unreadable_as_nobody(home: Path) -> int:
    with Queue(home) as q:
        first = q.enqueue(S, "locked")
        second = q.enqueue(S, "fine")
        (locked,) = [p for p in (home / S / "ready").rglob(f"{first}.*")]
        locked.chmod(0)
        m = q.dequeue(S)
        if m is None or m.id != second or q.dequeue(S) is not None:
            return 2
        kept = list((home / S / "quarantine").iterdir())
        return 0 if len(kept) == 1 and [p.kind for p in q.check()] == ["quarantined"] else 3


# -- the hardening issue's reproductions, through the command line -------------------------


def test_cli_a_stray_file_does_not_hang_dequeue_or_the_worker(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for i in (1, 2):
        ok(home, "enqueue", "c", stdin=f'{{"n":{i}}}')
    leaf = next(p.parent for p in (home / "c" / "ready").rglob("*") if p.is_file())
    (leaf / "notamessage.txt").write_text("junk")
    got = ephq(home, "dequeue", "c", "--max", "5")
    assert got.returncode == 0 and len(got.stdout.splitlines()) == 2
    assert ephq(home, "dequeue", "c").returncode == 1  # nothing left, said at once
    ok(home, "enqueue", "c", stdin='{"n":3}')
    worker = ephq(home, "worker", "c", "--exec", "true", "--drain")
    assert worker.returncode == 0, worker.stderr
    assert ephq(home, "dequeue", "c").returncode == 1
    found = ephq(home, "check")
    assert found.returncode == 8 and ": foreign: " in found.stdout
    assert ephq(home, "check", "--repair").returncode == 0
    listed = ok(home, "check")
    assert listed.startswith("c: quarantined: ") and "notamessage.txt" in listed


def test_cli_a_link_in_the_pool_is_not_written_through(tmp_path: Path) -> None:
    home, victim = tmp_path / "home", tmp_path / "victim"
    victim.write_text("precious")
    ok(home, "enqueue", "s", stdin="{}")
    (home / "s" / "pool" / "7.free").symlink_to(victim)
    for _ in range(3):
        ok(home, "enqueue", "s", stdin="{}")
    assert victim.read_text() == "precious"
    assert (home / "s" / "quarantine").is_dir() or (home / "s" / "pool" / "7.free").is_symlink()


def test_cli_a_corrupt_dead_letter_is_set_aside(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(home, "config", "s", "--max-attempts", "1")
    ok(home, "enqueue", "s", stdin='"doomed"')
    receipt = json.loads(ok(home, "dequeue", "s"))["receipt"]
    ok(home, "nack", "s", receipt)
    (dead,) = [p for p in (home / "s" / "dlq" / "ready").rglob("*") if p.is_file()]
    dead.write_text("garbage")
    got = ephq(home, "dequeue", "s", "--dlq")
    assert (got.returncode, got.stdout, got.stderr) == (1, "", "")
    assert ephq(home, "dequeue", "s", "--dlq").returncode == 1
    assert ok(home, "check").startswith("s: quarantined: ")
