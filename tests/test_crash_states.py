"""Every state a crash can leave keeps ephq's promises (the explorer is tests/crashstates.py).

Each scenario sets a stream up (taken as synced to disk), then records one operation or a short
sequence. For every distinct state a crash after any of its calls can leave, under the process
crash and the three power-loss models (file data lost; directories reverted too; a write torn
too), a fresh process (tests/crash_drain.py) runs `check`, drains the stream and its dead
letters (its clock a day later, so every lease and delay has run out), repairs, and checks
again. Before draining it enqueues three messages of its own, which
reuse any recycled file a crash left named twice. Invariants:

- every message whose enqueue had returned, and that nothing had begun to remove, is drained;
- every drained message carries its own data (never another message's);
- a batch is drained whole or not at all, until its enqueue_many returned;
- the drain ends, nothing raises, and after `check --repair` the store is clean (it may list
  what it set aside: a stale name a power loss left on a recycled file that now holds a message
  whose enqueue had not returned is quarantined, not delivered).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ephq import Message, Queue
from ephq.files import pool, sweep
from ephq.files.fsio import boot_id
from ephq.message import Exported
from tests.conftest import START_NS, FakeClock
from tests.crashstates import PROCESS, Explorer, Image, Recorder

S = "s"
DAY_NS = 86_400 * 1_000_000_000
ROOT = str(Path(__file__).resolve().parent.parent)  # where `python -m tests.crash_drain` runs


class Scenario:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.clock = FakeClock()
        self.q = Queue(home, clock=self.clock, keep_leases=False)
        self.data_of: dict[str, Any] = {}  # every message's data by id
        self.kept: set[str] = set()  # promised before recording began
        self.recorder: Recorder | None = None
        self._serial = itertools.count(1)
        self.keys: list[str] = []  # dedup keys the drain enqueues with again
        # The stream's settings ([max_attempts, visibility]) a crash may leave; empty: any.
        self.settings: list[list[Any]] = []

    # -- what the scenario does ------------------------------------------------------------

    def _payload(self, pad: int | None = None) -> dict[str, Any]:
        n = next(self._serial)
        if pad is None:
            pad = n % 5 * 40  # sizes vary, so a file is reused unevenly
        return {"n": n, "pad": "x" * pad}

    def _mark(self, *info: Any) -> None:
        if self.recorder is not None:
            self.recorder.mark(*info)

    def _promise(self, ids: list[str], items: list[Any]) -> None:
        for message_id, item in zip(ids, items, strict=True):
            self.data_of[message_id] = item
        if self.recorder is None:
            self.kept.update(ids)
        else:
            self._mark("promised", ids)

    def put(self, delay: float = 0, group: str | None = None, pad: int | None = None) -> str:
        item = self._payload(pad)
        self._mark("sending", [item])
        message_id = self.q.enqueue(S, item, delay=delay, group=group)
        self._promise([message_id], [item])
        return message_id

    def put_many(self, n: int, delay: float = 0) -> list[str]:
        items = [self._payload() for _ in range(n)]
        self._mark("sending", items)
        self._mark("batch", items)
        ids = self.q.enqueue_many(S, items, delay=delay)
        self._promise(ids, items)
        return ids

    def put_keyed(self, keys: list[str | None]) -> list[str]:
        """Enqueue one message per key (a batch when several); a key already taken returns
        its message's id and stores nothing, so only new ids are promised here."""
        items = [self._payload() for _ in keys]
        # What is stored: items without a key, or with one neither taken before (the scenario
        # keeps every key in its window) nor earlier in the batch.
        stored = [
            item
            for n, (key, item) in enumerate(zip(keys, items, strict=True))
            if key is None or (key not in self.keys and key not in keys[:n])
        ]
        self._mark("sending", stored)
        if len(stored) > 1:
            self._mark("batch", stored)
        ids = self.q.enqueue_many(S, items, dedup_keys=keys)
        new = [i for i, item in zip(ids, items, strict=True) if item in stored]
        self._promise(new, stored)
        self.keys += [k for k in keys if k is not None and k not in self.keys]
        return ids

    def take(self, n: int = 1, *, dlq: bool = False) -> list[Message]:
        got = self.q.dequeue_many(S, n, visibility=30, dlq=dlq)
        assert len(got) == n, f"the scenario expected {n} messages, got {len(got)}"
        return got

    def ack(self, m: Message, *, dlq: bool = False) -> None:
        assert m.receipt is not None
        self._released([m.id])
        self.q.ack(S, m.receipt)

    def _released(self, ids: list[str]) -> None:
        if self.recorder is None:
            self.kept.difference_update(ids)
        else:
            self._mark("released", ids)

    def purge(self, ids: list[str]) -> None:
        """Purge, sweeping in this process: a detached sweeper's calls would not be recorded,
        and sweeping here explores the states a crash mid-sweep leaves too."""
        self._released(ids)
        real = sweep.spawn
        sweep.spawn = lambda stream_dir, trees: False
        try:
            self.q.purge(S)
        finally:
            sweep.spawn = real

    def purge_dead(self, ids: list[str]) -> None:
        self._released(ids)
        self.q.purge_dead_letters(S)

    def fresh(self) -> None:
        """From here on, act as a new process would: nothing cached in memory."""
        self.q.close()
        self.q = Queue(self.home, clock=self.clock, keep_leases=False)

    @contextmanager
    def recording(self) -> Iterator[None]:
        # Every pool/ there is was looked at in this boot, as a store in use has been (pool.py):
        # a look in the operation would be for a new one only, and reads after it mark none.
        boot = boot_id()
        assert boot is not None, "the explorer's scenarios need a boot id to tell boots apart"
        for pool_dir in self.home.glob("**/pool"):
            (pool_dir / f"{pool.SCANNED}{boot}").touch()
        self.recorder = Recorder(str(self.home))
        with self.recorder.recording():
            yield

    # -- checking every state --------------------------------------------------------------

    def explore(self, workdir: str) -> int:
        assert self.recorder is not None
        explorer = Explorer(self.recorder)
        checked = 0
        seen: set[tuple[Image, str]] = set()
        for step, model, image in explorer.states():
            promised, sending, batches = self._book(step)
            # One check per state and promise: a state seen before the enqueue returned must be
            # checked again after, when more is owed.
            key = (image, repr((sorted(promised), sending, batches)))
            if key in seen:
                continue
            seen.add(key)
            dest = os.path.join(workdir, f"state-{checked}")
            explorer.materialise(image, dest)
            if model != PROCESS:  # a power loss: the next process runs in another boot
                for mark in Path(dest).glob(f"**/pool/{pool.SCANNED}*"):
                    mark.unlink()
            try:
                self._verify(dest, promised, sending, batches)
            except AssertionError as exc:
                raise AssertionError(
                    f"after call {step} of {len(self.recorder.events)} under the {model} "
                    f"model: {exc}\n{_describe(self.recorder.events, step, image)}"
                ) from exc
            shutil.rmtree(dest)
            checked += 1
        explorer.assert_complete()
        return checked

    def _book(self, step: int) -> tuple[set[str], list[Any], list[list[Any]]]:
        """What the log up to step promised: ids that must be there, data being sent, and
        batches that had not returned."""
        assert self.recorder is not None
        promised = set(self.kept)
        sending: list[Any] = []
        batches: list[list[Any]] = []
        for event in self.recorder.events[:step]:
            if event[0] != "mark":
                continue
            what, value = event[1], event[2]
            if what == "promised":
                promised.update(value)
                done = [self.data_of[i] for i in value]
                batches = [b for b in batches if b != done]
            elif what == "released":
                promised.difference_update(value)
            elif what == "sending":
                sending.extend(value)
            elif what == "batch":
                batches.append(value)
        return promised, sending, batches

    def _verify(
        self, home: str, promised: set[str], sending: list[Any], batches: list[list[Any]]
    ) -> None:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.crash_drain",
                home,
                str(self.clock.now_ns + DAY_NS),
                ",".join(self.keys),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert "error" not in result, result["error"]
        assert result["left"] == [], f"check --repair left problems: {result['left']}"
        if self.settings:
            assert result["settings"] in self.settings, f"settings {result['settings']} torn"
        after = {mid: data for mid, data in result["after"]}
        keyed = {mid for mid, _ in result["keyed"]}
        drained: dict[str, Any] = {}
        for mid, data in result["drained"]:
            if mid in keyed and isinstance(data, dict) and "key" in data:
                drained[mid] = data  # stored by the drain's own keyed enqueue
                continue
            if mid in after:
                assert data == after.pop(mid), f"{mid} came back changed"
                continue
            self._delivered(mid, data, drained, sending)
        assert not after, f"enqueued after the crash, then lost: {sorted(after)}"
        for mid, key in result["keyed"]:  # a key is never recorded without its message
            assert mid in drained, f"enqueue with key {key} after the crash returned {mid}, lost"
        missing = promised - set(drained)
        assert not missing, f"promised messages lost: {sorted(missing)}"
        values = list(drained.values())
        for batch in batches:
            found = sum(1 for item in batch if item in values)
            assert found in (0, len(batch)), f"a batch came back partial: {found} of {len(batch)}"

    def _delivered(self, mid: str, data: Any, drained: dict[str, Any], sending: list[Any]) -> None:
        expected = self.data_of.get(mid)
        if expected is not None:
            assert data == expected, f"message {mid} was delivered with {data!r}"
        else:  # an enqueue that had not returned: its data, not anyone else's
            assert data in sending, f"unknown message {mid} delivered with {data!r}"
            owner = [i for i, d in self.data_of.items() if d == data]
            assert not owner, f"message {mid} was delivered with the data of {owner}"
        drained[mid] = data


def _describe(events: list[Any], step: int, image: Image) -> str:
    calls = [
        " ".join(str(part)[-70:] if isinstance(part, str) else repr(part)[:40] for part in e)
        for e in events[max(0, step - 6) : step]
    ]
    files = [f"  {path}" for path, kind, _, group in image if kind == "f"]
    return "last calls:\n  " + "\n  ".join(calls) + "\nfiles left:\n" + "\n".join(files)


# -- the scenarios -------------------------------------------------------------------------


def _with_pool(s: Scenario, n: int, pad: int | None = None) -> None:
    """Acked files in the pool, so the next enqueues reuse them (the usual steady state)."""
    for _ in range(n):
        s.put(pad=pad)
    for m in s.take(n):
        s.ack(m)


def enqueue_new_file(s: Scenario) -> None:
    s.put()
    s.fresh()
    with s.recording():
        s.put()


def enqueue_staged(s: Scenario) -> None:
    """Single enqueues stage their files in tmp/ and flush once (store.py): new files, one
    into a leaf made on the way, and a delayed one."""
    s.put()
    with s.recording():
        s.put()
        s.clock.now_ns += 10**12  # another ready leaf
        s.put()
        s.put(delay=5)


def enqueue_reused_file(s: Scenario) -> None:
    _with_pool(s, 3)
    s.put()
    with s.recording():
        s.put()
        s.put()


def enqueue_into_settled_files(s: Scenario) -> None:
    """A long-lived producer settles the pool's files with one flush of pool/ and refills them
    with a flush of data alone (pool.py); a power loss can undo their moves and leave them
    sealed in pool/, where the first process after the boot must find them. Records of more
    than a sector (torn writes), of a few bytes, and one too big for the file it took."""
    for _ in range(6):
        s.put(pad=900)
    taken = s.take(6)
    settle_at_least = pool.SETTLE_AT_LEAST
    pool.SETTLE_AT_LEAST = 4  # fewer acks to record (and states to check) than 16
    try:
        with s.recording():  # from the acks on: their zeroing of the files is not flushed
            for m in taken:
                s.ack(m)
            s.fresh()
            s.put()  # a process's first enqueue goes the usual way; from the next it refills
            s.put(pad=700)
            s.put(pad=10)
            s.put(pad=3000)
    finally:
        pool.SETTLE_AT_LEAST = settle_at_least
    assert s.recorder is not None
    flushes = [event[0] for event in s.recorder.events if event[0] in ("fsync", "fdatasync")]
    # The first put's file, pool/, then each refill.
    assert flushes == ["fsync", "fsync", "fdatasync", "fdatasync", "fsync"], flushes


def enqueue_delayed(s: Scenario) -> None:
    _with_pool(s, 1)
    with s.recording():
        s.put(delay=5)


def enqueue_batch(s: Scenario) -> None:
    _with_pool(s, 2)
    s.put()
    with s.recording():
        s.put_many(4)


def enqueue_batches_fresh_and_delayed(s: Scenario) -> None:
    s.put()
    s.fresh()
    with s.recording():
        s.put_many(6)
        s.put_many(3, delay=5)


def dequeue_ack(s: Scenario) -> None:
    for _ in range(3):
        s.put()
    s.fresh()
    with s.recording():
        (m,) = s.take()
        s.ack(m)


def nack_and_extend(s: Scenario) -> None:
    for _ in range(3):
        s.put()
    with s.recording():
        first, second = s.take(2)
        s.q.nack(S, first.receipt or "")
        s.q.nack(S, second.receipt or "", delay=10)
        (again,) = s.take()
        s.q.extend(S, again.receipt or "", 60)
        s.q.release(S, again.receipt or "")


def durable_enqueue_where_a_nack_made_the_directory(s: Scenario) -> None:
    """A nack (not flushed) makes the delayed/ directory a durable enqueue then writes into."""
    s.put()
    with s.recording():
        (m,) = s.take()
        s.q.nack(S, m.receipt or "", delay=5)
        s.put(delay=5)


def dead_lettering(s: Scenario) -> None:
    s.q.configure(S, max_attempts=1)
    s.put()
    s.put()
    with s.recording():
        first, second = s.take(2)
        s.q.nack(S, first.receipt or "", reason="failed")
        s.q.reject(S, second.receipt or "", "hopeless")


def dead_letter_consumed_and_redriven(s: Scenario) -> None:
    s.q.configure(S, max_attempts=1)
    for _ in range(3):
        s.put()
    for m in s.take(3):
        s.q.nack(S, m.receipt or "")
    _with_pool(s, 2)
    with s.recording():
        (dead,) = s.take(dlq=True)
        s.ack(dead)
        s.q.redrive(S)


def dead_letter_handler_fails(s: Scenario) -> None:
    """A dead letter's handler fails: the dead letter is rewritten with why, now or delayed."""
    s.q.configure(S, max_attempts=1)
    for _ in range(2):
        s.put()
    for m in s.take(2):
        s.q.nack(S, m.receipt or "")
    with s.recording():
        # One lease at a time: on a file system without a journal (the strict model) a message
        # in flight when its old directory is flushed can end up in lost+found, as the README
        # says; that is not what this explores.
        (first,) = s.take(1, dlq=True)
        s.q.nack(S, first.receipt or "", delay=5, reason="archive down")
        (second,) = s.take(1, dlq=True)
        s.q.nack(S, second.receipt or "", reason="archive down")
    assert all("dlq_error" in m.metadata["dead"] for m in s.q.dead_letters(S))


def import_a_backlog(s: Scenario) -> None:
    """Import ready, delayed and dead messages at once: all or nothing, then all kept."""
    s.put()
    day = 86_400 * 1_000_000_000
    base = s.clock.now_ns
    items = [s._payload() for _ in range(4)]
    records = [
        Exported(f"{base - (9 - i) * 1000:016x}0000000{i}", state, i, due, meta, json.dumps(item))
        for i, (item, state, due, meta) in enumerate(
            zip(
                items,
                ["ready", "delayed", "inflight", "dead"],
                [None, base + day // 2, None, None],
                [{}, {}, {}, {"dead": {"stream": S, "error": "old", "attempts": 3}}],
                strict=True,
            )
        )
    ]
    with s.recording():
        s._mark("sending", items)
        s._mark("batch", items)
        s.q.import_messages(S, records)
        s._promise([r.id for r in records], items)


def dead_lettered_by_the_reaper(s: Scenario) -> None:
    """Expired leases whose attempts are spent (one with three, one with one, the limit then
    lowered to one): the reaper dead-letters them."""
    s.q.configure(S, max_attempts=3)
    first, second = s.put(), s.put()
    for _ in range(2):
        (m,) = s.take()
        s.q.nack(S, m.receipt or "")  # first: two attempts spent, back in ready/
    (held,) = s.take()
    assert held.id == first
    s.q.release(S, held.receipt or "")
    s.take(2)  # first is leased a third time, second once; both leases run out
    s.clock.advance(60)
    s.q.configure(S, max_attempts=1)
    s.fresh()
    with s.recording():
        s.q.dequeue_many(S, 5)  # the reaper dead-letters both leases
        s.put()
    assert {m.id for m in s.q.dead_letters(S)} == {first, second}


def dead_lettered_when_taken(s: Scenario) -> None:
    """A message in ready/ whose attempts are spent is dead-lettered by the consumer."""
    s.q.configure(S, max_attempts=3)
    s.put()
    for _ in range(2):
        (m,) = s.take()
        s.q.nack(S, m.receipt or "")
    s.q.configure(S, max_attempts=2)
    s.put()
    s.fresh()
    with s.recording():
        got = s.q.dequeue_many(S, 5)  # the first is dead-lettered on the way, the second leased
        assert len(got) == 1
        s.ack(got[0])


def by_id_in_the_dead_letters(s: Scenario) -> None:
    s.q.configure(S, max_attempts=1)
    doomed = [s.put() for _ in range(3)]
    for m in s.take(3):
        s.q.nack(S, m.receipt or "")
    with s.recording():
        s.q.redrive(S, [doomed[0]])
        s._released([doomed[1]])
        s.q.purge_dead_letters(S, [doomed[1]])


def extend_then_ack_from_another_process(s: Scenario) -> None:
    _with_pool(s, 1)
    s.put()
    s.put()
    with s.recording():
        (m,) = s.take()
        s.q.extend(S, m.receipt or "", 120)
        s.fresh()  # the ack comes from elsewhere: it finds the extended lease by its token
        s.ack(m)


def purges(s: Scenario) -> None:
    s.q.configure(S, max_attempts=1)
    dead = s.put()
    (m,) = s.take()
    s.q.nack(S, m.receipt or "")
    live = [s.put() for _ in range(3)]
    s.take()  # one in flight
    with s.recording():
        s.purge(live)
        s.purge_dead([dead])
        s.put()


def enqueue_with_dedup_keys(s: Scenario) -> None:
    """Keyed enqueues: a new key, a key taken before (nothing is stored), a batch with a key
    twice. After any crash an enqueue with one of the keys (the drain's) gets the id of a
    message that is there: a message is stored before its key is recorded."""
    s.q.configure(S, dedup_window=3 * 86400)  # the drain, a day later, is still in the window
    s.put_keyed(["k1"])
    s.fresh()
    with s.recording():
        s.put_keyed(["k2"])
        s.put_keyed(["k1"])
        s.put_keyed(["k3", None, "k3", "k4"])


def dead_letter_stream_and_back(s: Scenario) -> None:
    """Dead letters filed into another stream as its messages (by nack, by reject, and by
    the reaper when a lease runs out), then redriven home from there."""
    s.q.configure(S, max_attempts=1, dead_letter_stream="elsewhere")
    _with_pool(s, 1)
    for _ in range(3):
        s.put()
    first, second = s.take(2)
    s.fresh()
    with s.recording():
        s.q.nack(S, first.receipt or "", reason="failed")
        s.q.reject(S, second.receipt or "", "rejected")
        s.take()
        s.clock.advance(60)  # its lease runs out: the next look buries it
        s.q.stats(S)
        s.q.redrive("elsewhere")


def message_groups(s: Scenario) -> None:
    """A group's head acked, its next dead-lettered, one more joining while another is out,
    a redriven dead letter rejoining: after any crash every group still drains whole (a
    stuck group would leave its waiting messages undrained)."""
    s.q.configure(S, max_attempts=1)
    for _ in range(3):
        s.put(group="A")
    s.put(group="B")
    s.fresh()
    with s.recording():
        # (Only A's head is leased when its group's flushes run: a lease of another message of
        # the same leaf, unflushed, would be lost by them under the strict model, as by any
        # durable write into that leaf: docs/design.md, file systems without a journal.)
        (first,) = s.take()  # A's head
        s.ack(first)  # its next goes out
        (second,) = s.take()
        s.ack(second)
        (third,) = s.take()
        s.q.nack(S, third.receipt or "", reason="failed")  # its last attempt: dead
        s.put(group="A")
        s.put(delay=5, group="C")
        s.q.redrive(S)


def configure_settings(s: Scenario) -> None:
    """stream.json rewritten (fsio.replace_file) beside messages: a crash leaves the old
    settings or the new, whole, and no message is lost or changed."""
    s.q.configure(S, max_attempts=3, visibility=45)  # not the defaults a torn file gives
    _with_pool(s, 1)
    s.put()
    s.settings = [[3, 45.0], [7, 90.0]]
    with s.recording():
        s.q.configure(S, max_attempts=7, visibility=90)
        s.put()


def steady_state(s: Scenario) -> None:
    _with_pool(s, 2)
    with s.recording():
        for _ in range(4):
            s.put()
            (m,) = s.take()
            s.ack(m)


SCENARIOS: dict[str, Callable[[Scenario], None]] = {
    f.__name__: f
    for f in (
        enqueue_new_file,
        enqueue_staged,
        enqueue_reused_file,
        enqueue_into_settled_files,
        enqueue_delayed,
        enqueue_batch,
        enqueue_batches_fresh_and_delayed,
        dequeue_ack,
        nack_and_extend,
        durable_enqueue_where_a_nack_made_the_directory,
        dead_lettering,
        dead_letter_consumed_and_redriven,
        dead_letter_handler_fails,
        import_a_backlog,
        dead_lettered_by_the_reaper,
        dead_lettered_when_taken,
        by_id_in_the_dead_letters,
        extend_then_ack_from_another_process,
        purges,
        enqueue_with_dedup_keys,
        dead_letter_stream_and_back,
        message_groups,
        configure_settings,
        steady_state,
    )
}


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    """Where crash states are laid out, one after another (each removed once checked)."""
    path = tmp_path / "states"
    path.mkdir()
    return str(path)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_crash_state_keeps_the_promises(name: str, tmp_path: Path, workdir: str) -> None:
    s = Scenario(tmp_path / "home")
    s.clock.now_ns = START_NS
    SCENARIOS[name](s)
    checked = s.explore(workdir)
    assert checked > 3  # the recording saw the operation's calls
