"""Concurrency and crashes with real processes: producers and consumers racing, SIGKILL."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from ephq import LeaseLost, Queue
from tests.conftest import open_queue, open_store

PRODUCERS = 4
CONSUMERS = 4
PER_PRODUCER = 600


def _produce(home: str, index: int, out: str) -> None:
    q = Queue(home)
    ids = []
    for i in range(PER_PRODUCER):
        if i % 50 == 0:
            ids += q.enqueue_many("stress", [{"p": index, "i": i + k} for k in range(10)])
        elif i % 50 >= 10:
            ids.append(q.enqueue("stress", {"p": index, "i": i}))
    Path(out).write_text(json.dumps(ids))


def _consume(home: str, seed: int, out: str, acked: Any, total: int) -> None:
    rng = random.Random(seed)
    q = Queue(home)
    events: list[dict[str, Any]] = []
    while acked.value < total:
        m = q.dequeue("stress", visibility=rng.choice([0.3, 5.0]), wait=0.2)
        if m is None or m.receipt is None or m.visible_until is None:
            continue
        event: dict[str, Any] = {
            "id": m.id,
            "start": time.time(),
            "until": m.visible_until.timestamp(),
            "data": [m.data["p"], m.data["i"]],  # recycled files hold exactly their message
        }
        roll = rng.random()
        event["settle"] = time.time()  # the lease ends somewhere inside the call that follows
        try:
            if roll < 0.15:
                q.nack("stress", m.receipt, delay=rng.choice([0, 0.05]))
                event["outcome"] = "nack"
            elif roll < 0.20:
                event["outcome"] = "dropped"  # as if the consumer died: the lease must expire
            else:
                q.ack("stress", m.receipt)
                event["outcome"] = "ack"
                with acked.get_lock():
                    acked.value += 1
        except LeaseLost:
            event["outcome"] = "lost"
        events.append(event)
    Path(out).write_text(json.dumps(events))


@pytest.mark.timeout(300)
def test_producers_and_consumers_race_without_loss_or_double_lease(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    Queue(home).configure("stress", max_attempts=1000)
    ctx = multiprocessing.get_context("fork")
    total = PRODUCERS * (PER_PRODUCER // 50) * 50
    acked = ctx.Value("i", 0)
    producers = [
        ctx.Process(target=_produce, args=(home, p, str(tmp_path / f"p{p}.json")))
        for p in range(PRODUCERS)
    ]
    consumers = [
        ctx.Process(target=_consume, args=(home, c, str(tmp_path / f"c{c}.json"), acked, total))
        for c in range(CONSUMERS)
    ]
    try:
        for proc in consumers + producers:
            proc.daemon = True
            proc.start()
        for proc in producers + consumers:
            proc.join(timeout=240)
            assert proc.exitcode == 0
    finally:
        for proc in producers + consumers:
            proc.kill()

    produced = [
        i for p in range(PRODUCERS) for i in json.loads((tmp_path / f"p{p}.json").read_text())
    ]
    assert len(produced) == len(set(produced)) == total
    events = [
        e for c in range(CONSUMERS) for e in json.loads((tmp_path / f"c{c}.json").read_text())
    ]
    acks = Counter(e["id"] for e in events if e["outcome"] == "ack")
    assert set(acks) == set(produced)
    assert all(n == 1 for n in acks.values()), "a message was acked twice"
    acked_data = {tuple(e["data"]) for e in events if e["outcome"] == "ack"}
    assert len(acked_data) == total
    assert {e["outcome"] for e in events} >= {"ack", "nack", "dropped"}

    # No two leases of one message were valid at once: each began after the last one ended
    # (settled, or expired at its deadline).
    leases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        leases[e["id"]].append(e)
    for history in leases.values():
        history.sort(key=lambda e: e["start"])
        for earlier, later in itertools.pairwise(history):
            ended = earlier["until"]
            if earlier["outcome"] in ("ack", "nack"):
                ended = min(ended, earlier["settle"])
            assert later["start"] >= ended - 0.001

    q = Queue(home)
    stats = q.stats("stress")
    assert (stats.ready, stats.delayed, stats.inflight, stats.dlq) == (0, 0, 0, 0)
    assert q.check() == []


PRODUCER_SCRIPT = """
import sys
from ephq import Queue
q = Queue(sys.argv[1])
batch = sys.argv[2] == "batch"
n = 0
while True:
    if batch:
        ids = q.enqueue_many("crash", [{"batch": n, "k": k} for k in range(20)])
        print(" ".join(ids), flush=True)
    else:
        print(q.enqueue("crash", {"n": n, "pad": "x" * 3000}), flush=True)
    n += 1
"""


def _run_then_kill(args: list[str], after_lines: int, jitter: float) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER_SCRIPT, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(after_lines)]
    time.sleep(jitter)
    proc.send_signal(signal.SIGKILL)
    # Read through the same buffered file: readline may have read ahead, and communicate()
    # with a timeout reads the descriptor itself, which lost those lines (ids enqueued and
    # printed, counted as never promised).
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    return lines + [line for line in rest.splitlines() if line.strip()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(4))
def test_sigkilled_producer_loses_nothing_it_promised(tmp_path: Path, round_: int) -> None:
    home = str(tmp_path / "home")
    promised = _run_then_kill([home, "single"], 30 + 20 * round_, random.uniform(0, 0.02))
    q = Queue(home)
    delivered = {}
    while (m := q.dequeue("crash")) is not None:
        assert m.receipt is not None
        assert m.data["pad"] == "x" * 3000  # never a partial file
        delivered[m.id] = m
        q.ack("crash", m.receipt)
    assert set(promised) <= set(delivered)
    assert len(delivered) - len(promised) <= 1  # at most the one being written when killed
    # What it was writing when killed is at most one young leftover in tmp/, never delivered.
    leftovers = [n for n in os.listdir(Path(home) / "crash" / "tmp") if not n.endswith(".free")]
    assert len(leftovers) <= 1
    assert q.check() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(3))
def test_sigkilled_batch_producer_is_all_or_nothing(tmp_path: Path, round_: int) -> None:
    home = str(tmp_path / "home")
    promised = _run_then_kill([home, "batch"], 5 + 5 * round_, random.uniform(0, 0.05))
    q = Queue(home)
    by_batch: dict[int, set[str]] = defaultdict(set)
    while (m := q.dequeue("crash")) is not None:
        assert m.receipt is not None
        by_batch[m.data["batch"]].add(m.id)
        q.ack("crash", m.receipt)
    for line in promised:
        ids = set(line.split())
        assert any(ids == got for got in by_batch.values())
    assert all(len(ids) == 20 for ids in by_batch.values())


CONSUMER_SCRIPT = """
import sys, time
from ephq import Queue
where = sys.argv[1]
# Leases not kept: a kept lease of a process that died comes back at once (test_features.py),
# and here the deadline is what is tested (a kill after the keeper announced them made this
# test see them back 2 s early, on a loaded machine).
if where.startswith("postgresql://"):
    q = Queue(url=where, keep_leases=False)
else:
    q = Queue(where, keep_leases=False)
for m in q.dequeue_many("held", 5, visibility=2):
    print(m.id, m.visible_until.timestamp(), flush=True)
print("holding", flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_sigkilled_consumer_leases_come_back_after_their_deadline(
    store: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    q = open_store(home)
    ids = q.enqueue_many("held", list(range(8)))
    where = str(home) if store == "files" else store
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER_SCRIPT, where], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadlines = {}
    while (line := proc.stdout.readline().strip()) != "holding":
        mid, until = line.split()
        deadlines[mid] = float(until)
    held = list(deadlines)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert held == ids[:5]
    # The three it never took are there at once; a held one only once its deadline has passed
    # (on a machine slow enough to get here late, that is what it sees).
    early = q.dequeue_many("held", 10, visibility=60)
    looked_at = time.time()
    assert [m.id for m in early if m.id not in deadlines] == ids[5:]
    for m in early:
        if m.id in deadlines:
            assert m.attempts == 2 and looked_at >= deadlines[m.id], "a lease was broken early"
    back = [m for m in early if m.id in deadlines]
    deadline = time.monotonic() + 10
    while len(back) < len(held) and time.monotonic() < deadline:
        back += q.dequeue_many("held", 10, visibility=60, wait=1)
    assert sorted(m.id for m in back) == held
    assert all(m.attempts == 2 for m in back)
    assert q.check() == []


@pytest.mark.timeout(120)
@pytest.mark.both_backends
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork(2)")
def test_a_queue_forked_into_children_serves_them_all(store: str, tmp_path: Path) -> None:
    """A Queue made before a fork (gunicorn --preload, a multiprocessing pool) serves the
    parent and its children at once (forking.py): each message once, a lease keeper of its own
    in each child, and the parent's connections, bells and announcements still its own."""
    q = open_queue(store, tmp_path / "home")  # keeping leases: a keeper thread runs
    q.enqueue_many("f", list(range(400)))
    q.enqueue("g", "warm")
    warm = q.dequeue("g")
    assert warm is not None and warm.receipt
    q.ack("g", warm.receipt)
    assert q.dequeue("g", wait=0.05) is None  # a bell (a LISTEN connection) for stream g
    first = q.dequeue("f")
    assert first is not None and first.receipt and first.data == 0
    q.ack("f", first.receipt)

    def drain() -> list[int]:
        seen = []
        while batch := q.dequeue_many("f", 5):
            for m in batch:
                q.ack("f", m.receipt or "")
                seen.append(m.data)
        return seen

    reports, writes = os.pipe()
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            status = 1
            try:
                os.close(reports)
                seen = drain()
                keeper = [t.name for t in threading.enumerate()].count("ephq-lease-keeper")
                assert q.dequeue("g", wait=0.05) is None  # a bell of its own
                report = {"seen": seen, "keepers": keeper}
                os.write(writes, (json.dumps(report) + "\n").encode())
                q.close()
                status = 0
            finally:
                os._exit(status)
        children.append(pid)
    os.close(writes)
    seen = drain()
    statuses = [os.waitpid(pid, 0)[1] for pid in children]
    with os.fdopen(reports) as pipe:
        told = [json.loads(line) for line in pipe]
    assert statuses == [0, 0, 0]
    assert [r["keepers"] for r in told] == [1, 1, 1]
    assert sorted(seen + [n for r in told for n in r["seen"]]) == list(range(1, 400))
    q.enqueue("g", "after")  # the parent's own connection and bell, as before the fork
    after = q.dequeue("g", wait=1)
    assert after is not None and after.data == "after" and after.receipt
    q.ack("g", after.receipt)
    assert (q.stats("f").inflight, q.stats("g").inflight) == (0, 0)
    q.close()


def _drain_and_report(q: Queue, out: Any) -> None:
    """In a spawned process: take what there is of stream p, and send back what it was."""
    seen = []
    while batch := q.dequeue_many("p", 5):
        for m in batch:
            q.ack("p", m.receipt or "")
            seen.append(m.data)
    out.send(seen)
    q.close()


@pytest.mark.timeout(120)
@pytest.mark.both_backends
def test_a_queue_sent_to_spawned_processes_is_made_anew_there(store: str, tmp_path: Path) -> None:
    """multiprocessing's 'spawn' (and 'forkserver') send their arguments by pickle: a Queue
    arrives as a new Queue on the same store, with the same options."""
    q = open_queue(store, tmp_path / "home", fsync=False)
    q.enqueue_many("p", list(range(200)))
    spawn = multiprocessing.get_context("spawn")
    pipes = [spawn.Pipe(duplex=False) for _ in range(2)]
    workers = [spawn.Process(target=_drain_and_report, args=(q, w)) for _, w in pipes]
    for worker in workers:
        worker.start()
    got = [n for r, _ in pipes for n in r.recv()]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(got) == list(range(200))
    assert q.stats("p").inflight == 0
    with pytest.raises(TypeError, match="cannot be sent to another process"):
        pickle.dumps(open_queue(store, tmp_path / "home", clock=lambda: 0))
    q.close()


CHURN_SCRIPT = """
import sys, time
from ephq import Queue
q = Queue(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    q.enqueue("churn", "x")
    m = q.dequeue("churn")
    if m is not None:
        q.ack("churn", m.receipt)
"""


@pytest.mark.timeout(60)
def test_check_while_another_process_churns_the_pool(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    q = Queue(home)
    q.enqueue_many("churn", list(range(50)))
    churn = subprocess.Popen([sys.executable, "-c", CHURN_SCRIPT, home, "3"])
    try:
        looks = 0
        while churn.poll() is None:
            found = q.check()  # never raises, whatever moves under it
            assert all(p.kind in ("duplicate", "quarantined") for p in found), found
            looks += 1
    finally:
        churn.wait(timeout=30)
    assert churn.returncode == 0 and looks > 0
    assert q.check() == []


CAMPAIGN_MAX = 6  # max_attempts of the campaign's stream
CAMPAIGN_SCRIPT = r"""
import json, os, random, sys, time
from ephq import LeaseLost, Queue

home, log_path, seed, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "keep"
rng = random.Random(seed)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
q = (Queue(url=home, keep_leases=keep) if home.startswith("postgresql://")
     else Queue(home, keep_leases=keep))
S = "mix"

def note(**event):
    event["t"] = time.time()
    line = (json.dumps(event) + "\n").encode()
    # A SIGKILL can cut a write(2) short where it crosses a page of the file (the kernel copies
    # a page at a time and looks for a fatal signal in between): the next process's first line
    # then ran on from the torn one. So no line crosses a page; spaces fill the rest of one.
    room = 4096 - os.lseek(log, 0, os.SEEK_END) % 4096
    if len(line) > room:
        os.write(log, b" " * (room - 1) + b"\n")
    os.write(log, line)

serial = 0
while True:
    roll = rng.random()
    serial += 1
    if roll < 0.35:
        data = {"w": seed, "n": serial}
        mid = q.enqueue(S, data)
        note(op="enq", ids=[mid], data=[data])
    elif roll < 0.40:
        items = [{"w": seed, "n": serial, "k": k} for k in range(5)]
        note(op="enq", ids=q.enqueue_many(S, items), data=items)
    elif roll < 0.43:
        q.redrive(S)
    elif roll < 0.46:
        m = q.dequeue(S, dlq=True)
        if m is not None:
            note(op="settle", kind="dlq-ack", id=m.id)
            try:
                q.ack(S, m.receipt)
            except LeaseLost:
                pass  # another process redrove it while we held it
    elif roll < 0.48:
        q.stats(S)
        q.peek(S, 3)
    else:
        m = q.dequeue(S, visibility=rng.choice([0.3, 2.0]))
        if m is None:
            continue
        note(op="lease", id=m.id, attempts=m.attempts, until=m.visible_until.timestamp(),
             data=m.data)
        action = rng.random()
        try:
            if action < 0.08:
                until = q.extend(S, m.receipt, 3.0).timestamp()
                note(op="extended", id=m.id, until=until)
            kind = ("ack" if action < 0.70 else "nack" if action < 0.82 else
                    "nack-later" if action < 0.86 else "release" if action < 0.92 else
                    "reject" if action < 0.95 else "drop")
            if kind == "drop":
                continue  # as if it died holding the lease
            note(op="settle", kind=kind, id=m.id)
            if kind == "ack":
                q.ack(S, m.receipt)
            elif kind == "nack":
                q.nack(S, m.receipt)
            elif kind == "nack-later":
                q.nack(S, m.receipt, delay=0.2)
            elif kind == "release":
                q.release(S, m.receipt)
            else:
                q.reject(S, m.receipt, "campaign")
        except LeaseLost:
            note(op="lost", id=m.id)
"""


@pytest.mark.timeout(180)
@pytest.mark.both_backends
def test_a_sigkill_campaign_over_every_operation(store: str, tmp_path: Path) -> None:
    """Six processes mix every operation; one is SIGKILLed at random every few tenths of a
    second and started again. Three keep their leases (a killed one's come back early), three
    do not. Afterwards nothing promised is lost, no message is delivered with another's data,
    no two leases of a message were valid at once, attempts never go back, and the store
    checks clean."""
    home = str(tmp_path / "home")
    open_store(Path(home)).configure("mix", max_attempts=CAMPAIGN_MAX)
    where = home if store == "files" else store
    rng = random.Random(7)
    logs = [str(tmp_path / f"w{i}.log") for i in range(6)]

    def start(i: int) -> subprocess.Popen[bytes]:
        keep = "keep" if i % 2 == 0 else "no"
        seed = str(rng.randrange(10**6))
        return subprocess.Popen([sys.executable, "-c", CAMPAIGN_SCRIPT, where, logs[i], seed, keep])

    procs = [start(i) for i in range(6)]
    kills = 0
    deaths: dict[int, list[float]] = {i: [] for i in range(6)}  # when each log's writer died
    end = time.monotonic() + 12
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.1, 0.5))
            i = rng.randrange(6)
            deaths[i].append(time.time())  # no lease of it can come back before this
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            kills += 1
            procs[i] = start(i)
    finally:
        for i, proc in enumerate(procs):
            deaths[i].append(time.time())
            proc.kill()
            proc.wait()

    events = [
        dict(json.loads(line), log=i)
        for i, path in enumerate(logs)
        for line in Path(path).read_text().splitlines()
        if line.strip()  # (what filled a page's end)
    ]
    for e in events:  # a keeping process's lease lasts at most until that process died
        if e["op"] == "lease" and e["log"] % 2 == 0:
            e["died"] = next((t for t in deaths[e["log"]] if t >= e["t"]), None)
    data_of = {
        i: d for e in events if e["op"] == "enq" for i, d in zip(e["ids"], e["data"], strict=True)
    }
    settled = {(e["id"], e["kind"]) for e in events if e["op"] == "settle"}
    # Drain what is left, a day later: every lease has run out, every delay is due.
    drained: dict[str, Any] = {}
    with open_store(Path(home), clock=lambda: time.time_ns() + 86_400 * 10**9) as q:
        for dlq in (False, True):
            while got := q.dequeue_many("mix", 100, dlq=dlq):
                for m in got:
                    drained[m.id] = m.data
                    q.ack("mix", m.receipt or "")
        assert [p for p in q.check() if p.kind != "quarantined"] == []
        assert not [p for p in q.check() if p.kind == "quarantined"], "something was set aside"

    gone = {i for i, kind in settled if kind in ("ack", "dlq-ack")}
    lost = set(data_of) - set(drained) - gone
    assert not lost, f"{len(lost)} promised messages lost"
    for mid, data in drained.items():
        assert data_of.get(mid, data) == data, f"{mid} drained with another message's data"
    leases = _lease_histories(events, data_of)
    assert kills >= 20 and len(data_of) > 200 and len(leases) > 100


def _lease_histories(
    events: list[dict[str, Any]], data_of: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Each message's leases in order, checked: its own data, one valid lease at a time (a
    lease ends at its deadline, extended or not, or inside the settling call that began),
    attempts rising, unless the earlier lease was released (not counted) or the message may
    have died (rejected, or out of attempts) and been redriven with fresh ones."""
    leases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e["t"]):
        if e["op"] == "lease":
            assert data_of.get(e["id"], e["data"]) == e["data"], "leased with another's data"
            died = e.get("died")
            ended = e["until"] if died is None else min(e["until"], died)
            leases[e["id"]].append(dict(e, ended=ended))
        elif e["op"] == "extended" and leases[e["id"]]:
            lease = leases[e["id"]][-1]
            until = e["until"] if lease.get("died") is None else min(e["until"], lease["died"])
            lease["ended"] = max(lease["ended"], until)
        elif e["op"] == "settle" and e["kind"] != "dlq-ack" and leases.get(e["id"]):
            # (a dead letter's lease is not in the history: redrive can take it from its holder)
            lease = leases[e["id"]][-1]
            lease["ended"] = min(lease["ended"], e["t"])  # it ends inside this call, if at all
            lease["kind"] = e["kind"]
    for history in leases.values():
        for earlier, later in itertools.pairwise(history):
            assert later["t"] >= earlier["ended"] - 0.002, (
                f"two leases of a message at once: {earlier} then {later}"
            )
            died = earlier.get("kind") == "reject" or earlier["attempts"] >= CAMPAIGN_MAX
            if earlier.get("kind") != "release" and not died:
                assert later["attempts"] > earlier["attempts"], f"attempts went back {history}"
    return leases
