"""Queue features beyond the basic semantics (issue 13): rate limits, deduplication keys, ...

Each is exercised through the CLI and the worker, with several real processes, on every backend.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest

from ephq import Queue, keeping
from ephq.errors import BadInput, LeaseLost, NotFound
from ephq.files.dedup import key_path
from ephq.worker.rate import Rate, TokenBucket, parse_rate
from tests.conftest import FakeClock, fresh_database, open_store, store_environment
from tests.test_cli import EPHQ, ephq
from tests.test_worker import finish, script, start_worker, wait_for

# -- rate limits ---------------------------------------------------------------------------


def test_rates_parse_as_a_count_per_unit() -> None:
    assert parse_rate("10/s") == Rate(10, 1)
    assert parse_rate("100/m") == Rate(100, 60)
    assert parse_rate("1000 / h") == Rate(1000, 3600)
    assert parse_rate("5/10s") == Rate(5, 10)
    for bad in ("10", "10/x", "/s", "0/s", "-1/s", "ten/s"):
        with pytest.raises(BadInput, match="--rate"):
            parse_rate(bad)


def test_the_bucket_lets_a_burst_through_then_one_per_interval() -> None:
    now = [0.0]
    bucket = TokenBucket(Rate(4, 1), clock=lambda: now[0])
    assert bucket.available() == 4
    bucket.take(4)
    assert bucket.available() == 0
    assert bucket.seconds_until_token() == pytest.approx(0.25)
    now[0] = 0.6
    assert bucket.available() == 2
    now[0] = 100.0
    assert bucket.available() == 4  # never more than one burst saved up


@pytest.mark.timeout(60)
@pytest.mark.both_backends
@pytest.mark.parametrize("concurrency", ["1", "4"])  # one thread's cycle, and handler threads
def test_a_rate_limited_worker_starts_no_more_than_the_rate(
    store: str, home: Path, tmp_path: Path, concurrency: str
) -> None:
    q = open_store(home)
    q.enqueue_many("mail", list(range(12)))
    starts = tmp_path / "starts"
    handler = script(tmp_path, f"date +%s.%N >> {starts}\n")
    before = time.time()
    code, err = finish(
        start_worker(home, "mail", "--exec", handler, "--rate", "4/s", "-c", concurrency, "--drain")
    )
    assert code == 0, err
    times = sorted(float(t) for t in starts.read_text().split())
    assert len(times) == 12
    # A burst of 4, then one token every quarter second: the k-th start cannot come before
    # the worker was even launched plus (k - 3) quarters, however slow the machine is.
    for k, at in enumerate(times):
        assert at - before >= max(0, k - 3) * 0.25 - 0.01, (k, at - before)
    assert q.stats("mail").ready == 0


@pytest.mark.timeout(60)
@pytest.mark.both_backends
@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_waiting_for_the_rate_holds_no_lease(
    store: str, home: Path, tmp_path: Path, concurrency: str
) -> None:
    q = open_store(home)
    q.enqueue_many("slow", ["first", "second", "third"])
    handled = tmp_path / "handled"
    worker = start_worker(
        home,
        "slow",
        "--exec",
        f"cat >> {handled}; echo >> {handled}",
        *("--rate", "1/m", "-c", concurrency),
    )
    wait_for(lambda: handled.exists() and handled.read_text().count("\n") == 1)
    wait_for(lambda: q.stats("slow").inflight == 0)
    time.sleep(0.5)  # the worker waits for its next token: it must not lease meanwhile
    stats = q.stats("slow")
    assert (stats.ready, stats.inflight) == (2, 0)
    other = q.dequeue("slow")  # another consumer gets the next message at once
    assert other is not None and other.data == "second"
    worker.send_signal(signal.SIGTERM)  # a stop is not held up by the rate limit
    code, err = finish(worker, timeout=20)
    assert code == 0, err
    assert handled.read_text() == '"first"\n'


def test_a_bad_rate_is_one_line_and_exit_2(home: Path) -> None:
    proc = start_worker(home, "s", "--exec", "true", "--rate", "fast")
    code, err = finish(proc)
    assert code == 2
    assert err == (
        "ephq: --rate 'fast' is not a rate: use a count per unit, as in 10/s, 100/m, 1000/h\n"
    )
    assert not (home / "s").exists()


# -- deduplication keys --------------------------------------------------------------------


@pytest.mark.both_backends
def test_a_key_taken_within_the_window_stores_nothing_even_after_an_ack(
    q: Queue, clock: FakeClock
) -> None:
    first = q.enqueue("orders", {"order": 1}, dedup_key="order-1")
    assert q.enqueue("orders", {"order": 1, "retry": True}, dedup_key="order-1") == first
    other = q.enqueue("orders", {"order": 2}, dedup_key="order-2")
    plain = q.enqueue("orders", {"order": 3})
    assert len({first, other, plain}) == 3
    got = q.dequeue_many("orders", 10)
    assert [m.id for m in got] == [first, other, plain]
    assert got[0].data == {"order": 1}  # the first message, not the retry
    for m in got:
        q.ack("orders", m.receipt or "")
    clock.advance(299)
    assert q.enqueue("orders", {"order": 1}, dedup_key="order-1") == first  # acked, remembered
    assert q.stats("orders").ready == 0
    clock.advance(2)  # the default window, five minutes, has passed
    again = q.enqueue("orders", {"order": 1}, dedup_key="order-1")
    assert again != first
    assert [m.id for m in q.dequeue_many("orders", 10)] == [again]


@pytest.mark.both_backends
def test_the_window_is_a_setting_of_the_stream(q: Queue, clock: FakeClock) -> None:
    assert q.config("s").dedup_window == 300
    assert q.configure("s", dedup_window=timedelta(hours=1)).dedup_window == 3600
    first = q.enqueue("s", 1, dedup_key="k")
    clock.advance(3599)
    assert q.enqueue("s", 2, dedup_key="k") == first
    clock.advance(2)
    assert q.enqueue("s", 3, dedup_key="k") != first
    assert q.config("s").dedup_window == 3600
    for bad in (0, -1, "5m"):
        with pytest.raises(BadInput, match="dedup_window"):
            q.configure("s", dedup_window=bad)  # type: ignore[arg-type]


@pytest.mark.both_backends
def test_a_batch_takes_a_key_per_item(q: Queue) -> None:
    taken = q.enqueue("s", "before", dedup_key="b")
    ids = q.enqueue_many(
        "s", ["a1", "n1", "a2", "b1", "n2", "c1"], dedup_keys=["a", None, "a", "b", None, "c"]
    )
    assert ids[0] == ids[2]  # the same key twice in one batch: one message
    assert ids[3] == taken
    assert len({ids[0], ids[1], ids[4], ids[5], taken}) == 5
    assert [m.data for m in q.dequeue_many("s", 10)] == ["before", "a1", "n1", "n2", "c1"]
    with pytest.raises(BadInput, match="2 keys for 3 messages"):
        q.enqueue_many("s", [1, 2, 3], dedup_keys=["x", "y"])
    # Keys an array's encoding could mangle are keys like any other.
    odd = q.enqueue_many("s", [1, 2, 3, 4], dedup_keys=["x,y", 'q"{}', "NULL", "x,y"])
    assert odd[0] == odd[3] and len(set(odd)) == 3
    assert q.enqueue_many("s", [5, 6], dedup_keys=['q"{}', "NULL"]) == odd[1:3]


@pytest.mark.both_backends
def test_bad_keys_are_refused_before_anything_is_stored(q: Queue) -> None:
    for bad in ("", "x" * 513, "nul\x00", 7):
        with pytest.raises(BadInput, match="dedup key"):
            q.enqueue("s", 1, dedup_key=bad)  # type: ignore[arg-type]
    q.enqueue("s", 1, dedup_key="é" * 256)  # 512 bytes: the longest key
    assert q.stats("s").ready == 1


@pytest.mark.timeout(120)
@pytest.mark.both_backends
def test_racing_producers_with_the_same_keys_store_each_once(
    store: str, home: Path, tmp_path: Path
) -> None:
    """Eight processes at once: four enqueue one key, four enqueue batches of the same twenty
    keys in different orders (whose locks must not deadlock)."""
    procs = []
    for n in range(4):
        procs.append(_ephq_proc(home, "enqueue", "race", "--dedup-key", "the-one", stdin=f"{n}"))
    for n in range(4):
        order = list(range(20))
        random.Random(n).shuffle(order)
        lines = "".join(json.dumps({"k": f"key-{i}", "by": n}) + "\n" for i in order)
        procs.append(
            _ephq_proc(home, "enqueue", "race", "--lines", "--dedup-key-field", "k", stdin=lines)
        )
    outs: list[list[str]] = []
    for proc in procs:
        printed, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err
        outs.append(printed.split())
    assert len({ids[0] for ids in outs[:4]}) == 1
    ids_by_key: dict[str, set[str]] = {}
    for n, ids in enumerate(outs[4:]):
        order = list(range(20))
        random.Random(n).shuffle(order)
        for i, message_id in zip(order, ids, strict=True):
            ids_by_key.setdefault(f"key-{i}", set()).add(message_id)
    assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
    q = open_store(home)
    assert q.stats("race").ready == 21
    assert q.check() == []


def _ephq_proc(home: Path, *args: str, stdin: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    env.update(store_environment(home))
    proc = subprocess.Popen(
        [EPHQ, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    proc.stdin = None  # communicate() must not write again
    return proc


@pytest.mark.both_backends
def test_the_cli_takes_keys_and_refuses_bad_ones(store: str, home: Path) -> None:
    first = ephq(home, "enqueue", "s", "--dedup-key", "job-7", stdin='{"n": 1}')
    assert first.returncode == 0, first.stderr
    again = ephq(home, "enqueue", "s", "--dedup-key", "job-7", stdin='{"n": 2}')
    assert (again.returncode, again.stdout) == (0, first.stdout)
    lines = '{"id": 7, "n": 3}\n{"id": "x"}\n{"n": 4}\n{"id": 7}\n'
    batch = ephq(home, "enqueue", "s", "--lines", "--dedup-key-field", "id", stdin=lines)
    assert batch.returncode == 0, batch.stderr
    ids = batch.stdout.split()
    assert len(ids) == 4 and ids[0] == ids[3] and len(set(ids)) == 3
    set_window = ephq(home, "config", "s", "--dedup-window", "1h", "--json")
    assert json.loads(set_window.stdout)["dedup_window"] == 3600
    for args, stdin, error in (
        (
            ["--lines", "--dedup-key", "k"],
            "1\n",
            "ephq: --dedup-key names one message: with --lines, use --dedup-key-field\n",
        ),
        (
            ["--dedup-key-field", "id"],
            "1",
            "ephq: --dedup-key-field goes with --lines: for one message, use --dedup-key\n",
        ),
        (
            ["--lines", "--dedup-key-field", "id"],
            '{"id": 1}\n\n{"id": [1]}\n',
            "ephq: stdin, line 3: field 'id' is list; a dedup key is text or a whole number\n",
        ),
        (
            ["--dedup-key", ""],
            "1",
            "ephq: dedup key '' must be 1 to 512 bytes of text without NUL\n",
        ),
    ):
        bad = ephq(home, "enqueue", "s", *args, stdin=stdin)
        assert (bad.returncode, bad.stderr) == (2, error)
    assert open_store(home).stats("s").ready == 4


def test_expired_keys_are_forgotten_and_damaged_ones_reported(home: Path, clock: FakeClock) -> None:
    q = Queue(home, clock=clock)
    q.configure("s", dedup_window=60)
    for n in range(50):
        q.enqueue("s", n, dedup_key=f"k{n}")
    keys = home / "s" / "keys"
    assert len([p for p in keys.rglob("*") if p.is_file() and p.name != "pruned"]) == 50
    clock.advance(61)
    q.close()
    q = Queue(home, clock=clock)  # another process: the sweep is due for the store
    q.enqueue("s", "new", dedup_key="fresh")
    assert [p.name for p in keys.rglob("*") if p.is_file() and p.name != "pruned"] == [
        key_path("fresh")[1]
    ]
    bucket = keys / key_path("fresh")[0]
    (bucket / ("0" * 30)).write_text("{}")
    (bucket / ("1" * 30)).symlink_to("/etc/passwd")
    (keys / "junk").write_text("x")
    kinds = sorted(p.kind for p in q.check())
    assert kinds == ["foreign", "foreign", "unreadable"]
    q.check(repair=True)
    assert [p.kind for p in q.check() if p.kind != "quarantined"] == []
    assert q.enqueue("s", "again", dedup_key="fresh") != q.enqueue("s", "x", dedup_key="other")


def test_expired_keys_leave_the_database(database_server: str, clock: FakeClock) -> None:
    import psycopg

    url = fresh_database(database_server)
    q = Queue(url=url, clock=clock)
    q.configure("s", dedup_window=60)
    q.enqueue_many("s", list(range(50)), dedup_keys=[f"k{n}" for n in range(50)])
    clock.advance(61)
    q.close()
    q = Queue(url=url, clock=clock)  # another process: it sweeps at its first keyed enqueue
    q.enqueue("s", "new", dedup_key="fresh")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT key FROM ephq.dedup_keys").fetchall()
    assert rows == [("fresh",)]
    q.close()


# -- a dead-letter stream ------------------------------------------------------------------


def _die(q: Queue, stream: str, how: str, clock: FakeClock) -> str:
    """Lease the stream's next message and make it die: nack, reject, or a lease run out."""
    m = q.dequeue(stream, visibility=10)
    assert m is not None and m.receipt
    if how == "nack":
        q.nack(stream, m.receipt, reason="smtp 550")
    elif how == "reject":
        q.reject(stream, m.receipt, "no such user")
    else:
        clock.advance(11)
        assert q.dequeue(stream) is None  # its attempts are spent: dead-lettered, not leased
    return m.id


@pytest.mark.both_backends
def test_dead_letters_become_messages_of_the_dead_letter_stream(q: Queue, clock: FakeClock) -> None:
    q.configure("orders", max_attempts=1, dead_letter_stream="dead")
    ids = q.enqueue_many("orders", [{"n": 1}, {"n": 2}, {"n": 3}])
    assert [_die(q, "orders", how, clock) for how in ("nack", "reject", "expire")] == ids
    assert q.stats("orders")._replace(oldest_age=None)[1:5] == (0, 0, 0, 0)
    assert "dead" in q.streams() and q.stats("dead").ready == 3
    got = q.dequeue_many("dead", 10)
    assert [m.id for m in got] == ids and [m.data for m in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert all(m.stream == "dead" and m.attempts == 1 for m in got)  # its own first delivery
    deaths = [m.metadata["dead"] for m in got]
    assert [d["stream"] for d in deaths] == ["orders"] * 3
    assert [d["attempts"] for d in deaths] == [1, 1, 1]
    assert [d["error"] for d in deaths] == ["smtp 550", "no such user", "lease expired"]
    assert all(d["died_at"].endswith("Z") for d in deaths)
    assert q.dead_letters("orders") == []


@pytest.mark.both_backends
def test_redrive_from_the_dead_letter_stream_sends_each_home(q: Queue, clock: FakeClock) -> None:
    for stream in ("orders", "emails"):
        q.configure(stream, max_attempts=1, dead_letter_stream="dead")
    first = q.enqueue_many("orders", ["o1", "o2"])
    mail = q.enqueue("emails", "e1")
    _die(q, "orders", "nack", clock)
    _die(q, "emails", "reject", clock)
    q.enqueue("dead", "a message of its own")  # not a dead letter: stays
    assert q.redrive("dead", [first[0]]) == [first[0]]
    with pytest.raises(BadInput, match="not a dead letter of another stream"):
        q.redrive("dead", [q.peek("dead", 10)[-1].id])
    with pytest.raises(NotFound):
        q.redrive("dead", ["18ecdd0000000000aaaaaaaa"])
    assert q.redrive("dead") == [mail]
    assert [m.data for m in q.peek("dead", 10)] == ["a message of its own"]
    back = q.dequeue_many("orders", 10)
    assert [m.id for m in back] == first  # in its place, before o2
    assert back[0].attempts == 1 and back[0].metadata == {}
    assert [m.id for m in q.dequeue_many("emails", 10)] == [mail]


@pytest.mark.both_backends
def test_a_dead_letter_streams_own_dead_letters_keep_where_they_first_died(
    q: Queue, clock: FakeClock
) -> None:
    q.configure("orders", max_attempts=1, dead_letter_stream="dead")
    q.configure("dead", max_attempts=1)
    mid = q.enqueue("orders", "x")
    _die(q, "orders", "nack", clock)
    _die(q, "dead", "nack", clock)  # its handler in the dead-letter stream fails for good
    (letter,) = q.dead_letters("dead")
    assert letter.id == mid and letter.metadata["dead"]["stream"] == "orders"
    assert letter.metadata["dead"]["dlq_error"] == "smtp 550"
    assert q.redrive("dead", [mid]) == [mid]  # back into the dead-letter stream by its id
    assert q.peek("dead")[0].metadata["dead"]["stream"] == "orders"
    _die(q, "dead", "nack", clock)
    assert q.redrive("dead") == [mid]  # all of them: each goes home to where it first died
    assert q.stats("dead")[1:5] == (0, 0, 0, 0)
    assert q.dequeue("orders") is not None


@pytest.mark.both_backends
def test_dead_letter_streams_refuse_themselves_and_loops(q: Queue, clock: FakeClock) -> None:
    with pytest.raises(BadInput, match="cannot be its own dead-letter stream"):
        q.configure("a", dead_letter_stream="a")
    q.configure("a", dead_letter_stream="b")
    q.configure("b", dead_letter_stream="c")
    with pytest.raises(BadInput, match="loop: c -> a -> b -> c"):
        q.configure("c", dead_letter_stream="a")
    with pytest.raises(BadInput, match="invalid stream name"):
        q.configure("a", dead_letter_stream="no/such")
    assert q.config("c").dead_letter_stream is None
    q.configure("a", max_attempts=1, dead_letter_stream="")  # its own dead letters again
    assert q.config("a").dead_letter_stream is None
    q.enqueue("a", 1)
    _die(q, "a", "nack", clock)
    assert q.stats("a").dlq == 1


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_a_worker_consumes_the_dead_letter_stream(store: str, home: Path, tmp_path: Path) -> None:
    for stream in ("orders", "emails"):
        assert (
            ephq(
                home, "config", stream, "--dead-letter-stream", "dlq", "--max-attempts", "2"
            ).returncode
            == 0
        )
    open_store(home).enqueue_many("orders", [1, 2])
    open_store(home).enqueue("emails", 3)
    for stream in ("orders", "emails"):
        code, err = finish(
            start_worker(
                home,
                stream,
                "--exec",
                "exit 1",
                "--retry-delay",
                "0",
                "--drain",
                "--wait-retries",
                "10s",
            )
        )
        assert code == 0, err
    seen = tmp_path / "seen"
    handler = script(
        tmp_path,
        f'echo "$(cat) $EPHQ_STREAM $EPHQ_ATTEMPT $EPHQ_METADATA" >> {seen}\n',
    )
    code, err = finish(start_worker(home, "dlq", "--exec", handler, "--drain"))
    assert code == 0, err
    lines = sorted(seen.read_text().splitlines())
    assert [line.split(" ", 3)[:3] for line in lines] == [
        ["1", "dlq", "1"],
        ["2", "dlq", "1"],
        ["3", "dlq", "1"],
    ]
    deaths = [json.loads(line.split(" ", 3)[3])["dead"] for line in lines]
    assert [d["stream"] for d in deaths] == ["orders", "orders", "emails"]
    assert all(d["attempts"] == 2 and d["error"] == "exit 1" for d in deaths)


# -- a long-lived Queue's leases end with its process ----------------------------------------

HOLDING = r"""
import sys, time
from ephq import Queue, keeping
q = Queue(sys.argv[1], keep_leases=sys.argv[2] == "keep") if not sys.argv[1].startswith(
    "postgres") else Queue(url=sys.argv[1], keep_leases=sys.argv[2] == "keep")
got = q.dequeue_many("s", 2, visibility=600)
print(" ".join(m.id for m in got), flush=True)
time.sleep(600)
"""


def _holding_process(store: str, home: Path, keep: bool) -> tuple[subprocess.Popen[str], list[str]]:
    where = str(home) if store == "files" else store
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDING, where, "keep" if keep else "no"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ids = proc.stdout.readline().split()
    return proc, ids


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_a_killed_programs_leases_come_back_within_seconds(store: str, home: Path) -> None:
    q = open_store(home, keep_leases=False)
    sent = q.enqueue_many("s", ["a", "b", "c"])
    proc, ids = _holding_process(store, home, keep=True)
    assert ids == sent[:2]
    wait_for(lambda: sum(lease.holder is not None for lease in q.leases("s")) == 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    again = q.dequeue_many("s", 3, visibility=60, wait=30)
    while len(again) < 3:  # the third was ready all along; the two come back within seconds
        more = q.dequeue_many("s", 3, visibility=60, wait=30)
        assert more, "the killed program's leases did not come back"
        again += more
    assert sorted(m.id for m in again) == sent
    assert sorted(m.attempts for m in again) == [1, 2, 2]


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_leases_not_kept_wait_for_their_deadline(store: str, home: Path) -> None:
    q = open_store(home, keep_leases=False)
    sent = q.enqueue_many("s", ["a", "b"])
    proc, ids = _holding_process(store, home, keep=False)
    assert ids == sent
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert q.dequeue("s", wait=3) is None  # ten-minute leases: nobody gives them back early
    assert all(lease.holder is None for lease in q.leases("s"))


def test_a_closed_queue_leaves_its_leases_to_their_deadlines(home: Path) -> None:
    q = Queue(home)
    q.enqueue("s", 1)
    m = q.dequeue("s", visibility=600)
    assert m is not None
    wait_for(lambda: any(lease.holder is not None for lease in q.leases("s")))
    q.close()  # a clean end: nothing is given back early
    other = Queue(home, keep_leases=False)
    assert other.dequeue("s") is None
    assert [lease.holder for lease in other.leases("s")] == [None]


MANY_STREAMS = r"""
import resource, sys
from ephq import Queue, keeping
keeping.PUBLISH_EVERY_S = 0.005  # so that each lease is announced quickly
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
q, observer = Queue(sys.argv[1]), Queue(sys.argv[1], keep_leases=False)
for n in range(150):
    stream = f"s{n}"
    q.enqueue(stream, n)
    m = q.dequeue(stream, visibility=600)
    while observer.leases(stream)[0].holder is None:  # announced: its holder file is open
        pass
    q.ack(stream, m.receipt)
print("done", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_process_that_leased_in_many_streams_keeps_no_file_open_for_each(home: Path) -> None:
    """A keeping Queue announces a stream's leases in a holder file it keeps open and locked.
    One that has leased, one after the other, in more streams than the process may open files
    must not keep every stream's file open once its leases have ended (it failed with EMFILE
    after about 60 streams at a limit of 64 descriptors)."""
    done = subprocess.run(
        [sys.executable, "-c", MANY_STREAMS, str(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["done"]


def test_a_process_that_used_many_streams_keeps_the_state_of_a_bounded_number(
    home: Path,
) -> None:
    """A long-lived Queue that works with one stream after another (one per tenant) kept each
    stream's state for good, about 8 KB a stream: its memory grew without end. Now past
    MOST_STREAMS the oldest is dropped, and a lease taken in a stream dropped since is still
    extended, acked and settled by its receipt."""
    from ephq.files.backend import MOST_STREAMS

    q = Queue(home, keep_leases=False)
    q.enqueue("first", 1)
    m = q.dequeue("first", visibility=600)
    assert m is not None and m.receipt is not None
    q.extend("first", m.receipt, 900)  # this process alone knows the file's name now

    def use_streams(start: int, count: int) -> None:
        for n in range(start, start + count):
            q.enqueue(f"s{n}", n)
            got = q.dequeue(f"s{n}")
            assert got is not None and got.receipt is not None
            q.ack(f"s{n}", got.receipt)

    tracemalloc.start()
    try:
        use_streams(0, MOST_STREAMS)  # "first" is dropped by now
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        use_streams(MOST_STREAMS, MOST_STREAMS)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Kept for good, MOST_STREAMS more streams took more than 4 MB.
    assert grown < 1_000_000, grown
    q.ack("first", m.receipt)  # found by its name, though its stream was made anew
    stats = q.stats("first")
    assert (stats.ready, stats.inflight, stats.delayed) == (0, 0, 0)
    with pytest.raises(LeaseLost):
        q.ack("first", m.receipt)


def test_a_holder_without_leases_is_closed_and_comes_back_with_the_next(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ephq import keeping

    monkeypatch.setattr(keeping, "CLOSE_IDLE_AFTER_S", 0.0)
    q, observer = Queue(home), Queue(home, keep_leases=False)
    try:
        q.enqueue("s", 1)
        m = q.dequeue("s", visibility=600)
        assert m is not None and m.receipt is not None
        wait_for(lambda: [lease.holder is not None for lease in observer.leases("s")] == [True])
        assert len(os.listdir(home / "s" / "holders")) == 1
        q.ack("s", m.receipt)
        wait_for(lambda: os.listdir(home / "s" / "holders") == [])  # closed: its file is gone
        q.enqueue("s", 2)
        m = q.dequeue("s", visibility=600)
        assert m is not None
        wait_for(lambda: [lease.holder is not None for lease in observer.leases("s")] == [True])
    finally:
        q.close()


def test_a_kept_lease_past_its_deadline_is_announced_no_more(home: Path) -> None:
    """A process that never settles a lease stops announcing it once its deadline passes (the
    keeper reads the deadline from the receipt): its announcement does not grow for good."""
    q = Queue(home)
    try:
        q.enqueue("s", 1)
        assert q.dequeue("s", visibility=1) is not None
        observer = Queue(home, keep_leases=False)
        wait_for(lambda: [lease.holder is not None for lease in observer.leases("s")] == [True])
        # Not reaped (nobody dequeues): still in flight, past its deadline, no longer held.
        wait_for(lambda: [lease.holder is None for lease in observer.leases("s")] == [True])
    finally:
        q.close()


def test_announce_publishes_a_kept_lease_at_once(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a command worker calls before each handler starts (Worker, with a keeping Queue):
    the lease is announced on the caller's thread, not at the keeper thread's next round."""
    q = Queue(home)
    try:
        q.enqueue_many("s", [1, 2])
        observer = Queue(home, keep_leases=False)
        assert q.dequeue("s", visibility=600) is not None
        wait_for(lambda: [lease.holder is not None for lease in observer.leases("s")] == [True])
        monkeypatch.setattr(keeping, "PUBLISH_EVERY_S", 3600.0)  # the thread's next round: late
        time.sleep(0.3)  # (its wait of the old length ends, and it begins the long one)
        assert q.dequeue("s", visibility=600) is not None
        assert q.lease_keeper is not None
        q.lease_keeper.announce()
        assert [lease.holder is not None for lease in observer.leases("s")] == [True, True]
    finally:
        q.close()


def test_an_extended_kept_lease_is_announced_past_its_first_deadline(home: Path) -> None:
    """Extended at once (before the keeper's thread has even published the lease), it is
    announced until its new deadline, not forgotten at its first."""
    q = Queue(home)
    try:
        q.enqueue("s", 1)
        m = q.dequeue("s", visibility=1)
        assert m is not None and m.receipt is not None
        q.extend("s", m.receipt, 120)
        observer = Queue(home, keep_leases=False)
        wait_for(lambda: [lease.holder is not None for lease in observer.leases("s")] == [True])
        time.sleep(1.5)  # past the first deadline, and a dozen publishing rounds
        assert [lease.holder is not None for lease in observer.leases("s")] == [True]
    finally:
        q.close()


@pytest.mark.both_backends
def test_a_dead_letter_streams_backlog_moves_and_still_goes_home(
    q: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    q.configure("orders", max_attempts=1, dead_letter_stream="dead")
    mid = q.enqueue("orders", "x")
    _die(q, "orders", "nack", clock)
    backlog = list(q.export("dead"))
    assert [r.metadata["dead"]["stream"] for r in backlog] == ["orders"]
    other = Queue(tmp_path / "elsewhere", keep_leases=False)  # files, whatever q is on
    assert other.import_messages("dead", backlog) == 1
    assert other.redrive("dead") == [mid]
    m = other.dequeue("orders")
    assert m is not None and m.id == mid and m.metadata == {}


KEYED_PRODUCER = r"""
import json, random, sys, time
from ephq import Queue, keeping
where, seed = sys.argv[1], int(sys.argv[2])
q = (Queue(url=where, keep_leases=False) if where.startswith("postgres")
     else Queue(where, keep_leases=False))
rng = random.Random(seed)
while True:  # a cron job that retries: keys from a small set, again and again
    key = f"job-{rng.randrange(40)}"
    mid = q.enqueue("jobs", {"key": key, "by": seed}, dedup_key=key)
    print(json.dumps([key, mid]), flush=True)
"""


def _printed(line: str) -> tuple[str, str] | None:
    """A (key, id) a keyed producer printed; None for a line the kill cut (an enqueue whose
    id we did not see, not counted)."""
    try:
        key, message_id = json.loads(line)
    except ValueError:
        return None
    return str(key), str(message_id)


@pytest.mark.timeout(120)
@pytest.mark.both_backends
def test_keyed_producers_killed_at_random_lose_nothing_and_agree_on_ids(
    store: str, home: Path
) -> None:
    """Four producers retry 40 keys over and over and are SIGKILLed at random, over and over.
    Every id an enqueue returned is a stored message carrying that key, and within one window
    each key has the id its first enqueue got, whoever asked (a crash between a message and
    its key may add one more message for it: counted, and bounded by the kills)."""
    open_store(home).configure("jobs", dedup_window=3600)
    where = str(home) if store == "files" else store
    rng = random.Random(11)
    returned: list[tuple[str, str]] = []
    kills = 0
    end = time.monotonic() + 8
    while kills < 8 or time.monotonic() < end:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", KEYED_PRODUCER, where, str(rng.randrange(10**6))],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for proc in procs:
            assert proc.stdout is not None
            # Killed after it has enqueued a few (however slow the machine), at a point of
            # its next enqueue that the scheduler picks.
            lines = [proc.stdout.readline() for _ in range(rng.randrange(1, 12))]
            proc.send_signal(signal.SIGKILL)
            out = proc.stdout.read()  # through readline's buffer (see _run_then_kill)
            proc.wait(timeout=30)
            kills += 1
            lines += out.splitlines(keepends=True)
            returned += [pair for line in lines if (pair := _printed(line)) is not None]
    q = open_store(home)
    stored = {m.id: m.data["key"] for m in q.dequeue_many("jobs", 1000)}
    assert len(returned) >= kills >= 8
    for key, mid in returned:
        assert stored.get(mid) == key, f"enqueue of {key} returned {mid}, not stored as it"
    ids_by_key: dict[str, set[str]] = {}
    for key, mid in returned:
        ids_by_key.setdefault(key, set()).add(mid)
    extra = sum(len(ids) - 1 for ids in ids_by_key.values())
    assert extra <= kills  # only a crash between a message and its key makes a second
    assert len(stored) == len(set(stored)) and len(stored) <= 40 + kills
    if store == "files":
        assert [p for p in q.check() if p.kind not in ("quarantined", "stale-tmp")] == []


# -- message groups ------------------------------------------------------------------------


@pytest.mark.both_backends
def test_a_groups_messages_go_one_at_a_time_in_order(q: Queue, clock: FakeClock) -> None:
    a = [q.enqueue("s", f"a{n}", group="A") for n in range(3)]
    b = [q.enqueue("s", f"b{n}", group="B") for n in range(2)]
    plain = q.enqueue("s", "plain")
    assert q.stats("s").ready == 6  # waiting ones count as ready
    got = q.dequeue_many("s", 10)
    assert [m.id for m in got] == [a[0], b[0], plain]
    assert [m.group for m in got] == ["A", "B", None]
    assert q.dequeue("s") is None  # each group's next waits for its head
    by_id = {m.id: m for m in got}
    q.ack("s", by_id[a[0]].receipt or "")
    (next_a,) = q.dequeue_many("s", 10)
    assert next_a.id == a[1]
    q.nack("s", next_a.receipt or "", delay=60)  # waiting for its retry: still holds A
    assert q.dequeue("s") is None
    clock.advance(61)
    again = q.dequeue("s")
    assert again is not None and again.id == a[1] and again.attempts == 2
    q.release("s", by_id[b[0]].receipt or "")  # given back: B's head again, not its next
    m = q.dequeue("s")
    assert m is not None and m.id == b[0]


@pytest.mark.both_backends
def test_dead_lettering_a_groups_head_releases_the_next_and_redrive_rejoins(
    q: Queue, clock: FakeClock
) -> None:
    q.configure("s", max_attempts=1)
    first, second, third = (q.enqueue("s", n, group="G") for n in range(3))
    m = q.dequeue("s")
    assert m is not None and m.id == first
    q.reject("s", m.receipt or "", "bad")
    m = q.dequeue("s")
    assert m is not None and m.id == second
    (dead,) = q.dead_letters("s")
    assert dead.id == first and dead.group == "G"
    assert q.redrive("s") == [first]  # back into its group: behind the head that is out
    assert q.dequeue("s") is None
    q.ack("s", m.receipt or "")
    m = q.dequeue("s")
    assert m is not None and m.id == first  # its place by id: before third
    q.ack("s", m.receipt or "")
    m = q.dequeue("s")
    assert m is not None and m.id == third
    q.ack("s", m.receipt or "")
    assert q.stats("s")[1:5] == (0, 0, 0, 0)


@pytest.mark.both_backends
def test_a_batch_of_many_groups_keeps_each_groups_order(q: Queue) -> None:
    # Keys an array's encoding could mangle, interleaved with messages of no group.
    keys = ["a,b", 'q"{}', "NULL", None]
    ids = q.enqueue_many("s", list(range(40)), groups=[keys[i % 4] for i in range(40)])
    assert q.stats("s").ready == 40
    seen: dict[str | None, list[str]] = {}
    while got := q.dequeue_many("s", 7):
        assert len({m.group for m in got if m.group is not None}) == sum(
            1 for m in got if m.group is not None
        )  # at most one message of a group out at once
        for m in got:
            seen.setdefault(m.group, []).append(m.id)
        assert q.ack_many("s", [m.receipt or "" for m in got]) == []
    for i, key in enumerate(keys):
        assert seen[key] == ids[i::4]


@pytest.mark.both_backends
def test_a_groups_backlog_purges_exports_and_imports_whole(q: Queue, tmp_path: Path) -> None:
    ids = q.enqueue_many("s", ["x", "y", "z"], groups=["G", "G", None])
    backlog = list(q.export("s"))
    assert [r.id for r in backlog] == ids
    assert [r.metadata.get("group") for r in backlog] == ["G", "G", None]
    other = Queue(tmp_path / "elsewhere", keep_leases=False)
    assert other.import_messages("s", backlog) == 3
    got = other.dequeue_many("s", 10)
    assert [m.id for m in got] == [ids[0], ids[2]]
    assert q.purge("s") == 3
    assert q.stats("s")[1:5] == (0, 0, 0, 0)
    q.enqueue("s", "after", group="G")  # a purged group starts afresh
    m = q.dequeue("s")
    assert m is not None and m.data == "after"


@pytest.mark.timeout(120)
@pytest.mark.both_backends
def test_workers_run_many_groups_at_once_each_strictly_in_order(
    store: str, home: Path, tmp_path: Path
) -> None:
    """Two workers of four handlers each over 12 groups of 8 messages (and some without a
    group): a group's messages start in enqueue order, each only after the one before it
    ended, while different groups run at the same time."""
    lines = "".join(
        json.dumps({"g": f"g{g}", "n": n}) + "\n" for n in range(8) for g in range(12)
    ) + "".join(json.dumps({"n": n}) + "\n" for n in range(8))
    done = ephq(home, "enqueue", "jobs", "--lines", "--group-field", "g", stdin=lines)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "log"
    handler = script(
        tmp_path,
        f'echo "start $EPHQ_GROUP $(date +%s.%N) $(cat)" >> {log}\n'
        "sleep 0.05\n"
        f'echo "end $EPHQ_GROUP $(date +%s.%N)" >> {log}\n',
    )
    workers = [
        start_worker(home, "jobs", "--exec", handler, "-c", "4", "--drain") for _ in range(2)
    ]
    for worker in workers:
        code, err = finish(worker, timeout=110)
        assert code == 0, err
    runs: dict[str, list[list[float]]] = {}
    for line in log.read_text().splitlines():
        kind, group, at, *rest = line.split(" ", 3)
        if group == "":
            continue
        if kind == "start":
            runs.setdefault(group, []).append([float(at), 0.0, json.loads(rest[0])["n"]])
        else:
            open_runs = [r for r in runs[group] if r[1] == 0.0]
            assert len(open_runs) == 1, f"group {group} ran two at once"
            open_runs[0][1] = float(at)
    assert sorted(runs) == sorted(f"g{g}" for g in range(12))
    for group, history in runs.items():
        assert [r[2] for r in history] == list(range(8)), f"{group} out of order"
        for earlier, later in itertools.pairwise(history):
            assert later[0] >= earlier[1], f"{group}: the next began before the last ended"
    spans = sorted((r[0], r[1]) for history in runs.values() for r in history)
    overlapping = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    assert overlapping > 0  # groups ran side by side
    assert open_store(home).stats("jobs")[1:5] == (0, 0, 0, 0)


@pytest.mark.both_backends
def test_the_cli_takes_groups_and_shows_them(store: str, home: Path) -> None:
    first = ephq(home, "enqueue", "s", "--group", "customer-7", stdin='{"n": 1}')
    assert first.returncode == 0, first.stderr
    assert ephq(home, "enqueue", "s", "--group", "customer-7", stdin='{"n": 2}').returncode == 0
    got = ephq(home, "dequeue", "s", "--max", "10")
    records = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(r["data"], r["group"]) for r in records] == [({"n": 1}, "customer-7")]
    for args, stdin, error in (
        (
            ["--lines", "--group", "g"],
            "1\n",
            "ephq: --group names one message's group: with --lines, use --group-field\n",
        ),
        (
            ["--group-field", "g"],
            "1",
            "ephq: --group-field goes with --lines: for one message, use --group\n",
        ),
        (["--group", ""], "1", "ephq: group '' must be 1 to 512 bytes of text without NUL\n"),
        (
            ["--lines", "--group-field", "g"],
            '{"g": 1.5}\n',
            "ephq: stdin, line 1: field 'g' is float; a group is text or a whole number\n",
        ),
    ):
        bad = ephq(home, "enqueue", "s", *args, stdin=stdin)
        assert (bad.returncode, bad.stderr) == (2, error)
    assert open_store(home).stats("s").ready == 1  # the one waiting behind the leased head


@pytest.mark.both_backends
def test_a_delayed_head_holds_its_group_and_keys_work_with_groups(
    q: Queue, clock: FakeClock
) -> None:
    later = q.enqueue("s", "later", group="G", delay=60)
    behind = q.enqueue("s", "behind", group="G")
    assert q.dequeue("s") is None  # the head is not due yet, and the next waits for it
    clock.advance(61)
    m = q.dequeue("s")
    assert m is not None and m.id == later
    q.ack("s", m.receipt or "")
    m = q.dequeue("s")
    assert m is not None and m.id == behind
    q.ack("s", m.receipt or "")
    once = q.enqueue("s", "keyed", group="H", dedup_key="k")
    assert q.enqueue("s", "keyed again", group="H", dedup_key="k") == once
    got = q.dequeue_many("s", 10)
    assert [(m.id, m.group) for m in got] == [(once, "H")]


def test_a_lease_noted_while_the_keeper_applies_the_last_ones_is_announced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dequeue notes its lease by appending to the keeper's events, which the keeper's
    thread applies a few times a second. An append that loaded the events before the thread
    took them and landed after must still be applied: with the list swapped for a fresh one,
    it went to the old list and the lease was never announced. The interleaving is played
    here in one thread (the keeper's own thread is not started)."""
    from ephq.keeping import _TOOK, LeaseKeeper
    from ephq.message import Message

    announced: list[set[str]] = []

    class Announcements:  # a holder that remembers what it was told
        def publish(self, leases: dict[str, int]) -> None:
            announced.append(set(leases))

        def close(self) -> None:
            pass

    monkeypatch.setattr(LeaseKeeper, "_start", lambda keeper: None)
    keeper = LeaseKeeper(lambda stream, dead, name: Announcements(), "test")
    far = time.time_ns() + 3_600_000_000_000

    def leased(n: int) -> Message:
        receipt = f"{far:016x}.{n:024x}.1.0000000{n}"
        return Message(f"{n:024x}", receipt, "s", 1, "1", 1, None, None)  # type: ignore[arg-type]

    keeper.took("s", [leased(1)])
    pending = keeper._events  # what the second dequeue loaded, before the thread's round
    keeper._publish()
    pending.append((_TOOK, "s", leased(2).receipt or "", time.time_ns()))  # ...its append
    keeper._publish()
    assert announced[-1] == {leased(1).receipt, leased(2).receipt}
