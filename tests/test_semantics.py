"""The Queue's semantics through its public API, with a clock the tests move by hand."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from ephq import BadInput, LeaseLost, NotFound, Queue
from ephq.message import Exported
from tests.conftest import FakeClock, open_queue

# Every test here runs on the file backend and on PostgreSQL (those that look at files say so).
pytestmark = pytest.mark.both_backends


def test_enqueue_dequeue_ack_round_trip(q: Queue) -> None:
    message_id = q.enqueue("jobs", {"to": "a@example.com", "n": [1, 2.5, None]})
    m = q.dequeue("jobs", visibility=30)
    assert m is not None
    assert (m.id, m.stream, m.attempts) == (message_id, "jobs", 1)
    assert m.data == {"to": "a@example.com", "n": [1, 2.5, None]}
    assert m.receipt is not None
    q.ack("jobs", m.receipt)
    assert q.dequeue("jobs") is None
    assert q.stats("jobs").ready == 0


def test_dequeue_on_missing_stream_is_none_and_creates_nothing(q: Queue, home: Path) -> None:
    assert q.dequeue("nothing-here") is None
    assert q.dequeue_many("nothing-here", 5) == []
    assert q.dequeue("nothing-here", wait=0.2) is None
    assert not (home / "nothing-here").exists()
    assert q.streams() == []


def test_fifo_within_a_stream(q: Queue) -> None:
    ids = [q.enqueue("s", i) for i in range(50)]
    got = []
    while (m := q.dequeue("s")) is not None:
        got.append(m.id)
        assert m.receipt
        q.ack("s", m.receipt)
    assert got == ids


def test_fifo_holds_across_processes_fresh_queue_objects(
    store: str, home: Path, clock: FakeClock
) -> None:
    ids = []
    for i in range(20):
        clock.advance(0.001)  # separate processes in the same nanosecond have no order
        with open_queue(store, home, clock=clock) as q:
            ids.append(q.enqueue("s", i))
    got = []
    for _ in ids:
        with open_queue(store, home, clock=clock) as q:
            m = q.dequeue("s")
        assert m is not None and m.receipt
        got.append(m.id)
    assert got == ids


def test_data_json_is_kept_exactly_as_enqueued(q: Queue) -> None:
    text = '{ "b": 1.0,  "a": [1e3, "é"], "big": 123456789012345678901234567890 }'
    q.enqueue_json("s", text + "\n")
    m = q.dequeue("s")
    assert m is not None
    assert m.data_json == text
    assert m.data["big"] == 123456789012345678901234567890


def test_a_batch_keeps_every_message_exactly_and_acks_at_once(q: Queue) -> None:
    # Text that an array's encoding could mangle: separators, quotes, braces, escapes, NUL
    # escaped, and characters beyond one byte.
    texts = ['"é ☃ 😀"', '{"a": "b,c\\"d{}"}', '"\\u0000x"', "[]", '"NULL"', '"a\\\\b"', "1e3"]
    ids = q.enqueue_many_json("s", texts)
    got = q.dequeue_many("s", 10)
    assert [m.id for m in got] == ids
    assert [m.data_json for m in got] == texts
    assert got[0].data == "é ☃ 😀" and got[2].data == "\x00x"
    assert all(m.metadata == {} for m in got)
    receipts = [m.receipt or "" for m in got]
    # A receipt given twice is acked by the first mention; the second finds it ended, as a
    # second ack would.
    assert q.ack_many("s", [receipts[0], *receipts]) == [receipts[0]]
    assert q.ack_many("s", receipts[:2]) == receipts[:2]  # ended
    assert q.stats("s").inflight == 0 and q.dequeue("s") is None


def test_lease_hides_message_until_it_expires_then_redelivers(q: Queue, clock: FakeClock) -> None:
    q.enqueue("s", "x")
    first = q.dequeue("s", visibility=10)
    assert first is not None
    assert q.dequeue("s") is None
    clock.advance(9.9)
    assert q.dequeue("s") is None
    clock.advance(0.2)
    again = q.dequeue("s", visibility=10)
    assert again is not None
    assert (again.id, again.attempts) == (first.id, 2)
    assert again.receipt != first.receipt


def test_receipt_stays_valid_after_expiry_until_leased_again(q: Queue, clock: FakeClock) -> None:
    q.enqueue("s", "x")
    m = q.dequeue("s", visibility=1)
    assert m is not None and m.receipt
    clock.advance(5)
    q.stats("s")  # reaps the expired lease back to ready
    q.ack("s", m.receipt)  # nobody took it since: still this delivery
    assert q.dequeue("s") is None


def test_stale_receipt_cannot_touch_the_new_delivery(q: Queue, clock: FakeClock) -> None:
    q.enqueue("s", "x")
    old = q.dequeue("s", visibility=1)
    assert old is not None and old.receipt
    clock.advance(2)
    new = q.dequeue("s", visibility=30)
    assert new is not None and new.receipt
    for settle in (
        lambda: q.ack("s", old.receipt or ""),
        lambda: q.nack("s", old.receipt or ""),
        lambda: q.extend("s", old.receipt or "", 30),
    ):
        with pytest.raises(LeaseLost) as info:
            settle()
        assert info.value.exit_code == 3
    q.ack("s", new.receipt)


def test_ack_twice_and_nack_after_ack_are_lease_lost(q: Queue) -> None:
    q.enqueue("s", 1)
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.ack("s", m.receipt)
    with pytest.raises(LeaseLost):
        q.ack("s", m.receipt)
    with pytest.raises(LeaseLost):
        q.nack("s", m.receipt)


def test_nack_returns_message_to_its_original_place(q: Queue) -> None:
    first = q.enqueue("s", "first")
    q.enqueue("s", "second")
    m = q.dequeue("s")
    assert m is not None and m.receipt and m.id == first
    q.nack("s", m.receipt)
    with pytest.raises(LeaseLost):
        q.ack("s", m.receipt)
    again = q.dequeue("s")
    assert again is not None
    assert (again.id, again.attempts) == (first, 2)


def test_nack_with_delay_hides_then_returns_in_place(q: Queue, clock: FakeClock) -> None:
    first = q.enqueue("s", "first")
    second = q.enqueue("s", "second")
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.nack("s", m.receipt, delay=timedelta(minutes=1))
    assert q.stats("s").delayed == 1
    nxt = q.dequeue("s")
    assert nxt is not None and nxt.id == second and nxt.receipt
    q.nack("s", nxt.receipt, delay=120)
    clock.advance(61)
    back = q.dequeue("s")
    assert back is not None and back.id == first


def test_extend_keeps_the_lease_and_the_receipt(q: Queue, clock: FakeClock) -> None:
    q.enqueue("s", 1)
    m = q.dequeue("s", visibility=10)
    assert m is not None and m.receipt
    clock.advance(8)
    until = q.extend("s", m.receipt, 10)
    assert until.timestamp() == pytest.approx(clock.now_ns / 1e9 + 10)
    clock.advance(8)  # past the first deadline
    assert q.dequeue("s") is None
    q.extend("s", m.receipt, 60)
    q.ack("s", m.receipt)
    assert q.stats("s").inflight == 0


def test_receipt_works_from_another_queue_object_after_extend(
    store: str, home: Path, clock: FakeClock
) -> None:
    a, b = open_queue(store, home, clock=clock), open_queue(store, home, clock=clock)
    a.enqueue("s", 1)
    m = a.dequeue("s", visibility=10)
    assert m is not None and m.receipt
    a.extend("s", m.receipt, 100)
    b.extend("s", m.receipt, 200)  # b has never seen this lease: it must find it on disk
    clock.advance(150)
    assert a.dequeue("s") is None
    b.ack("s", m.receipt)


def test_delayed_enqueue(q: Queue, clock: FakeClock) -> None:
    q.enqueue("s", "later", delay=30)
    now = q.enqueue("s", "now")
    s = q.stats("s")
    assert (s.ready, s.delayed) == (1, 1)
    m = q.dequeue("s")
    assert m is not None and m.id == now
    assert q.dequeue("s") is None
    clock.advance(30)
    later = q.dequeue("s")
    assert later is not None and later.data == "later"


def test_attempts_are_counted_on_lease_and_spent_ones_go_to_dlq(q: Queue, clock: FakeClock) -> None:
    q.configure("s", max_attempts=3)
    mid = q.enqueue("s", {"job": 1})
    for attempt in (1, 2, 3):
        m = q.dequeue("s", visibility=5)
        assert m is not None and m.attempts == attempt
        clock.advance(6)  # the consumer died: never acked, never nacked
    assert q.dequeue("s") is None
    stats = q.stats("s")
    assert (stats.ready, stats.inflight, stats.dlq) == (0, 0, 1)
    dead = q.dead_letter("s", mid)
    assert dead.data == {"job": 1}
    info = dead.metadata["dead"]
    assert info["error"] == "lease expired"
    assert info["attempts"] == 3
    assert info["stream"] == "s"
    assert info["died_at"].endswith("Z")


def test_nack_on_last_attempt_dead_letters_with_reason(q: Queue) -> None:
    q.configure("s", max_attempts=2)
    mid = q.enqueue("s", 1)
    receipts = []
    for _ in range(2):
        m = q.dequeue("s")
        assert m is not None and m.receipt
        receipts.append(m.receipt)
        q.nack("s", m.receipt, reason="smtp said 550")
    assert q.dequeue("s") is None
    assert [d.id for d in q.dead_letters("s")] == [mid]
    assert q.dead_letter("s", mid).metadata["dead"]["error"] == "smtp said 550"
    with pytest.raises(LeaseLost):
        q.ack("s", receipts[-1])


def test_release_does_not_spend_an_attempt(q: Queue) -> None:
    q.configure("s", max_attempts=1)
    q.enqueue("s", 1)
    for _ in range(3):
        m = q.dequeue("s")
        assert m is not None and m.receipt and m.attempts == 1
        q.release("s", m.receipt)
    assert q.stats("s").dlq == 0


def test_dead_letters_lease_ack_redrive_and_purge(q: Queue) -> None:
    q.configure("s", max_attempts=1)
    ids = [q.enqueue("s", i) for i in range(4)]
    for _ in ids:
        m = q.dequeue("s")
        assert m is not None and m.receipt
        q.nack("s", m.receipt, reason="boom")
    assert [d.id for d in q.dead_letters("s")] == ids
    dm = q.dequeue("s", dlq=True)
    assert dm is not None and dm.receipt and dm.id == ids[0]
    assert dm.metadata["dead"]["error"] == "boom"
    q.ack("s", dm.receipt)  # the receipt knows it is a dead letter's
    assert q.redrive("s", [ids[1]]) == [ids[1]]
    back = q.dequeue("s")
    assert back is not None and (back.id, back.attempts) == (ids[1], 1)
    assert q.purge_dead_letters("s", [ids[2]]) == [ids[2]]
    assert q.redrive("s") == [ids[3]]
    assert q.stats("s").dlq == 0
    with pytest.raises(NotFound):
        q.dead_letter("s", ids[2])
    with pytest.raises(NotFound):
        q.redrive("s", [ids[2]])


def test_redrive_and_purge_of_several_ids_are_all_or_nothing(q: Queue) -> None:
    """An id that is not a dead letter refuses the whole command before anything moves; an id
    given twice is one."""
    q.configure("s", max_attempts=1)
    ids = [q.enqueue("s", i) for i in range(2)]
    for _ in ids:
        m = q.dequeue("s")
        assert m is not None and m.receipt
        q.nack("s", m.receipt)
    missing = "18aaaaaaaaaaaaaa00000000"
    for act in (q.redrive, q.purge_dead_letters):
        with pytest.raises(NotFound, match=missing):
            act("s", [ids[0], missing])
        assert [d.id for d in q.dead_letters("s")] == ids  # neither moved nor deleted
    assert q.redrive("s", [ids[0], ids[0]]) == [ids[0]]
    assert q.purge_dead_letters("s", [ids[1], ids[1]]) == [ids[1]]
    assert q.stats("s").dlq == 0
    assert [m.id for m in q.dequeue_many("s", 5)] == [ids[0]]


def test_dead_letters_are_not_dead_lettered_again(q: Queue) -> None:
    q.configure("s", max_attempts=1)
    q.enqueue("s", 1)
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.nack("s", m.receipt)
    for attempt in range(2, 5):  # its deliveries go on counting from the one in the stream
        d = q.dequeue("s", dlq=True)
        assert d is not None and d.receipt and d.attempts == attempt
        q.nack("s", d.receipt)
    assert q.stats("s").dlq == 1


def test_lowering_max_attempts_dead_letters_on_next_lease(q: Queue) -> None:
    q.enqueue("s", 1)
    for _ in range(2):
        m = q.dequeue("s")
        assert m is not None and m.receipt
        q.nack("s", m.receipt)
    q.configure("s", max_attempts=2)
    assert q.dequeue("s") is None
    assert q.stats("s").dlq == 1


def test_batch_enqueue_and_dequeue(q: Queue) -> None:
    ids = q.enqueue_many("s", [{"i": i} for i in range(25)])
    assert len(ids) == 25 and ids == sorted(ids)
    batch = q.dequeue_many("s", 10)
    assert [m.id for m in batch] == ids[:10]
    assert len({m.receipt for m in batch}) == 10
    rest = q.dequeue_many("s", 100)
    assert [m.id for m in rest] == ids[10:]
    assert q.enqueue_many("s", []) == []


def test_batch_enqueue_is_all_or_nothing_on_bad_item(q: Queue, home: Path) -> None:
    q.enqueue("s", 0)
    with pytest.raises(Exception, match="JSON-serialisable"):
        q.enqueue_many("s", [1, 2, {3}])
    assert q.stats("s").ready == 1


def test_peek_shows_without_leasing(q: Queue) -> None:
    ids = [q.enqueue("s", i) for i in range(5)]
    seen = q.peek("s", 3)
    assert [m.id for m in seen] == ids[:3]
    assert all(m.receipt is None for m in seen)
    m = q.dequeue("s")
    assert m is not None and m.id == ids[0]


def test_stats_counts_every_state_and_oldest_age(q: Queue, clock: FakeClock) -> None:
    q.enqueue("a", 1)
    clock.advance(5)
    q.enqueue("a", 2)
    q.enqueue("a", 3, delay=60)
    m = q.dequeue("a")
    assert m is not None
    clock.advance(2)
    s = q.stats("a")
    assert (s.stream, s.ready, s.delayed, s.inflight, s.dlq) == ("a", 1, 1, 1, 0)
    assert s.oldest_age == pytest.approx(2.0)
    q.enqueue("b", 1)
    assert [x.stream for x in q.stats()] == ["a", "b"]
    assert q.stats("b").oldest_age is not None
    m = q.dequeue("b")
    assert m is not None and m.receipt
    q.ack("b", m.receipt)
    assert q.stats("b").oldest_age is None
    with pytest.raises(NotFound, match=r"no stream 'empty' in .* \(streams: a, b\)"):
        q.stats("empty")  # a typo is not an empty stream


def test_purge_removes_messages_but_keeps_dead_letters(q: Queue) -> None:
    q.configure("s", max_attempts=1)
    q.enqueue("s", "dies")
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.nack("s", m.receipt)
    for i in range(5):
        q.enqueue("s", i)
    q.enqueue("s", "d", delay=100)
    leased = q.dequeue("s")
    assert leased is not None and leased.receipt
    assert q.purge("s") == 6
    s = q.stats("s")
    assert (s.ready, s.delayed, s.inflight, s.dlq) == (0, 0, 0, 1)
    with pytest.raises(LeaseLost):
        q.ack("s", leased.receipt)
    q.enqueue("s", "after")
    after = q.dequeue("s")
    assert after is not None and after.data == "after"


def test_configure_persists_with_the_stream(store: str, home: Path, clock: FakeClock) -> None:
    q = open_queue(store, home, clock=clock)
    assert q.config("s").max_attempts == 5
    cfg = q.configure("s", max_attempts=7, visibility=timedelta(seconds=45), max_size=4096)
    assert (cfg.max_attempts, cfg.visibility, cfg.max_size) == (7, 45.0, 4096)
    with open_queue(store, home) as again:
        assert again.config("s") == cfg
    assert q.configure("s", visibility=5).max_attempts == 7


def test_default_visibility_comes_from_the_stream(q: Queue, clock: FakeClock) -> None:
    q.configure("s", visibility=100)
    q.enqueue("s", 1)
    m = q.dequeue("s")
    assert m is not None and m.visible_until is not None
    assert m.visible_until.timestamp() == pytest.approx(clock.now_ns / 1e9 + 100)


def test_files_and_home_are_private(realq: Queue, home: Path) -> None:
    realq.enqueue("s", "secret")
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    files = [p for p in (home / "s" / "ready").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHQ_HOME", str(tmp_path / "envhome"))
    Queue().enqueue("s", 1)
    assert (tmp_path / "envhome" / "s").is_dir()


def test_fsync_off_still_delivers(store: str, home: Path) -> None:
    q = open_queue(store, home, fsync=False)
    q.enqueue_many("s", [1, 2])
    q.enqueue("s", 3)
    assert [m.data for m in q.dequeue_many("s", 5)] == [1, 2, 3]


def test_reject_dead_letters_at_once(q: Queue) -> None:
    mid = q.enqueue("s", {"bad": True})
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.reject("s", m.receipt, "exit 100: no such customer")
    assert q.dequeue("s") is None
    dead = q.dead_letter("s", mid)
    assert dead.metadata["dead"] == {
        **dead.metadata["dead"],
        "error": "exit 100: no such customer",
        "attempts": 1,
    }
    with pytest.raises(LeaseLost):
        q.ack("s", m.receipt)


def test_long_operations_report_progress(q: Queue) -> None:
    ticks: list[int] = []
    ids = q.enqueue_many("s", list(range(30)), progress=ticks.append)
    assert sum(ticks) == 30
    q.configure("s", max_attempts=1)
    for m in q.dequeue_many("s", 30):
        assert m.receipt
        q.nack("s", m.receipt)
    ticks.clear()
    assert q.redrive("s", progress=ticks.append) == ids
    assert sum(ticks) == 30


def test_a_large_message_round_trips_exactly(q: Queue) -> None:
    big = {"blob": "é" * 150_000, "n": 1}  # larger than one read and than the pool keeps
    q.enqueue("s", big)
    m = q.dequeue("s")
    assert m is not None and m.receipt and m.data == big
    q.ack("s", m.receipt)
    q.enqueue("s", "small")
    again = q.dequeue("s")
    assert again is not None and again.data == "small"


def test_export_then_import_keeps_ids_order_attempts_and_dead_letters(
    q: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    q.configure("s", max_attempts=3)
    first, second, later = q.enqueue("s", 1), q.enqueue("s", {"b": [2]}), q.enqueue("s", 3, 60)
    doomed = q.enqueue("s", 4)
    held, back, dies = q.dequeue_many("s", 3)
    assert (held.id, back.id, dies.id) == (first, second, doomed)
    q.nack("s", back.receipt or "")
    q.reject("s", dies.receipt or "", "boom")
    exported = list(q.export("s"))
    by_id = {r.id: r for r in exported}
    assert by_id[first].state == "inflight" and by_id[second].state == "ready"
    assert by_id[later].state == "delayed" and by_id[doomed].state == "dead"
    assert by_id[doomed].metadata["dead"]["error"] == "boom"
    with Queue(tmp_path / "other", clock=clock) as other:
        assert other.import_messages("t", exported) == 4
        with pytest.raises(Exception, match="already in stream 't'"):
            other.import_messages("t", exported[:1])  # all or nothing: none added twice
        got = other.dequeue_many("t", 10, visibility=600)
        assert [x.id for x in got] == [first, second]  # the lease came back ready, in order
        assert [x.attempts for x in got] == [2, 2]
        assert got[1].data_json == '{"b":[2]}'
        assert [d.id for d in other.dead_letters("t")] == [doomed]
        clock.advance(61)
        delayed = other.dequeue("t")
        assert delayed is not None and delayed.id == later
        assert other.stats("t").ready == 0


def test_import_refuses_a_bad_record_and_keeps_nothing(q: Queue) -> None:
    q.enqueue("s", 1)
    (good,) = list(q.export("s"))
    bad = good._replace(id="nope")
    with pytest.raises(Exception, match="'nope' is not a message id"):
        q.import_messages("t", [good._replace(id=good.id[:-1] + "f"), bad])
    with pytest.raises(Exception, match="state must be one of"):
        q.import_messages("t", [good._replace(state="lost")])
    with pytest.raises(BadInput, match=f"message {good.id} is given twice"):
        q.import_messages("t", [good, good])
    with pytest.raises(NotFound):
        q.stats("t")


def test_a_reason_no_store_can_keep_is_kept_with_replacement_characters(q: Queue) -> None:
    """A reason is often a handler's stderr: a NUL (which PostgreSQL's text refuses) or a lone
    surrogate (not UTF-8) in it must neither fail the nack nor differ between backends."""
    q.configure("s", max_attempts=1)
    nacked, rejected = q.enqueue("s", 1), q.enqueue("s", 2)
    m = q.dequeue("s")
    assert m is not None and m.receipt and m.id == nacked
    q.nack("s", m.receipt, reason="binary\x00stderr \udcff")
    m = q.dequeue("s")
    assert m is not None and m.receipt and m.id == rejected
    q.reject("s", m.receipt, reason="\x00")
    assert q.dead_letter("s", nacked).metadata["dead"]["error"] == "binary\ufffdstderr \ufffd"
    assert q.dead_letter("s", rejected).metadata["dead"]["error"] == "\ufffd"


def test_imported_metadata_no_store_can_keep_is_kept_with_replacement_characters(
    q: Queue,
) -> None:
    """A dead letter the file backend kept before reasons were made keepable, exported: its
    error imports on both backends alike (PostgreSQL's jsonb refuses NUL and lone surrogates)."""
    meta = {"dead": {"error": "a\x00b", "stream": "t", "attempts": 1}, "x\udcff": ["\x00"]}
    mid = "18ed008f7cb24bf736661aec"
    assert q.import_messages("t", [Exported(mid, "dead", 1, None, meta, "1")]) == 1
    kept = q.dead_letter("t", mid).metadata
    assert kept["dead"]["error"] == "a\ufffdb" and kept["x\ufffd"] == ["\ufffd"]


@pytest.mark.parametrize("visibility", [None, 5])
def test_a_limit_lowered_under_a_retried_message_dead_letters_it_at_the_next_claim(
    q: Queue, visibility: int | None
) -> None:
    """The claim asks for max_attempts only for a message delivered before (the file backend
    then reads the settings): with the stream's visibility and with one given."""
    mid = q.enqueue("s", 1)
    for _ in range(2):
        m = q.dequeue("s", visibility=visibility)
        assert m is not None and m.receipt
        q.nack("s", m.receipt)
    q.configure("s", max_attempts=2)
    assert q.dequeue("s", visibility=visibility) is None
    dead = q.dead_letter("s", mid).metadata["dead"]
    assert (dead["attempts"], dead["error"]) == (2, "delivered 2 times; max_attempts is 2")


def test_purge_and_check_of_a_stream_that_is_not_there_are_not_found(q: Queue) -> None:
    """`ephq purge emial-queue --yes` (and `dlq purge`) printed 0 and exit 0, and `ephq check
    emial-queue` found nothing wrong: a typo passed for a stream emptied, or without fault."""
    q.enqueue("email-queue", 1)
    for call in (
        lambda: q.purge("emial-queue"),
        lambda: q.check("emial-queue"),
        lambda: q.purge_dead_letters("emial-queue"),
    ):
        with pytest.raises(NotFound, match=r"no stream 'emial-queue'.*email-queue"):
            call()
    assert q.check("email-queue") == []
    assert q.purge("email-queue") == 1


def test_imported_metadata_nested_as_deep_as_the_parser_allows_still_imports(q: Queue) -> None:
    """Metadata is made keepable by a walk of its own, not recursion: 900 levels (what a
    line of export may hold) were a RecursionError once that walk recursed."""
    deep: object = []
    for _ in range(899):
        deep = [deep]
    mid = "18ed008f7cb24bf736661aec"
    assert q.import_messages("t", [Exported(mid, "ready", 0, None, {"x\x00": deep}, "1")]) == 1
    (peeked,) = q.peek("t")
    assert peeked.id == mid and list(peeked.metadata) == ["x\ufffd"]
