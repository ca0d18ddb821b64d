"""`ephq worker` with real handlers, real signals and real process groups, under watchdogs."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ephq import Message, Queue
from ephq.errors import BadInput, StoragePermissionDenied
from ephq.worker import Cancelled, Outcome, PermanentFailure, Worker
from ephq.worker.command import CommandHandler
from ephq.worker.guard import MARK
from tests.conftest import open_store, store_environment

EPHQ = str(Path(sys.executable).parent / "ephq")


def start_worker(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    env.update(store_environment(home))
    return subprocess.Popen(
        [EPHQ, "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "handler.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def worker_with_running_handler(
    home: Path, tmp_path: Path, seconds: int, *args: str
) -> subprocess.Popen[str]:
    """A worker on stream s whose handler has started and sleeps for seconds."""
    started = tmp_path / "started"
    handler = script(tmp_path, f"touch {started}\nsleep {seconds}\n")
    worker = start_worker(home, "s", "--exec", handler, *args)
    wait_for(started.exists)
    return worker


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet (as in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate: object, timeout: float = 30) -> None:
    assert callable(predicate)
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_exit_status_decides_ack_dead_letter_or_retry(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    q.configure("jobs", max_attempts=3)
    ok_id = q.enqueue("jobs", "ok")
    bad_id = q.enqueue("jobs", "permanent")
    flaky_id = q.enqueue("jobs", "flaky")
    handler = script(
        tmp_path,
        "data=$(cat)\n"
        'case "$data" in *permanent*) echo "no such user" >&2; exit 100;;\n'
        '  *flaky*) echo "try $EPHQ_ATTEMPT failed" >&2; exit 3;; esac\n',
    )
    code, err = finish(
        start_worker(home, "jobs", "--exec", handler, "--drain", "--retry-delay", "0")
    )
    assert code == 0, err
    assert q.stats("jobs").ready == 0 and q.stats("jobs").dlq == 2
    assert (
        q.dead_letter("jobs", bad_id).metadata["dead"]["error"] == "exit 100; stderr: no such user"
    )
    flaky = q.dead_letter("jobs", flaky_id).metadata["dead"]
    assert (flaky["attempts"], flaky["error"]) == (3, "exit 3; stderr: try 3 failed")
    with pytest.raises(Exception, match="no dead letter"):
        q.dead_letter("jobs", ok_id)
    assert "handled 5 (acked 1, retried 2, dead-lettered 2, released 0, lease lost 0)" in err


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_handler_gets_data_on_stdin_and_facts_in_environment(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    text = '{ "to": "ann@example.com",  "n": 1.0 }'
    mid = q.enqueue_json("mail", text)
    out = tmp_path / "seen"
    handler = script(
        tmp_path,
        f"cat > {out}.stdin\nenv | grep ^EPHQ_ | sort > {out}.env\n",
    )
    code, err = finish(start_worker(home, "mail", "--exec", handler, "--drain"))
    assert code == 0, err
    assert Path(f"{out}.stdin").read_text() == text
    env = dict(line.split("=", 1) for line in Path(f"{out}.env").read_text().splitlines())
    assert env["EPHQ_STREAM"] == "mail"
    assert env["EPHQ_MESSAGE_ID"] == mid
    assert env["EPHQ_ATTEMPT"] == "1"
    # The handler's own ephq reaches the same store: the home, or the database's URL.
    assert {k: v for k, v in env.items() if k in ("EPHQ_HOME", "EPHQ_URL")} == (
        {"EPHQ_HOME": str(home)} if store == "files" else {"EPHQ_URL": store}
    )
    assert env["EPHQ_ENQUEUED_AT"].endswith("Z")
    assert env["EPHQ_RECEIPT"].count(".") == 3


def test_a_handler_gets_the_workers_environment_as_it_is_when_the_handler_starts(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read at every start: a variable the worker's own code changes (a credential it
    refreshes) reaches the next handler. The worker's own store, group and guard token are
    never passed on: the handler gets the worker's store, and its message's group or none."""
    q = Queue(home, keep_leases=False)
    q.enqueue("s", 1)
    q.enqueue("s", 2, group="g")
    seen = tmp_path / "seen"
    pattern = "^(CREDENTIAL|EPHQ_URL|EPHQ_HOME|EPHQ_GROUP)="
    handler = CommandHandler(
        f"env | grep -E '{pattern}' | sort >> {seen}; echo -- >> {seen}",
        store={"EPHQ_HOME": str(home)},
    )
    monkeypatch.setenv("EPHQ_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("EPHQ_GROUP", "the-workers-own")
    try:
        for credential in ("first", "refreshed"):
            monkeypatch.setenv("CREDENTIAL", credential)
            m = q.dequeue("s")
            assert m is not None and m.receipt
            handler(m, threading.Event())
            q.ack("s", m.receipt)
    finally:
        handler.close()
    assert seen.read_text().split("--\n")[:2] == [
        f"CREDENTIAL=first\nEPHQ_HOME={home}\n",
        f"CREDENTIAL=refreshed\nEPHQ_GROUP=g\nEPHQ_HOME={home}\n",
    ]


CLOSED_STDIO = """
import os, sys, threading
from ephq import Queue
from ephq.worker.command import CommandHandler
q = Queue(sys.argv[1], keep_leases=False)
m = q.dequeue("s")
os.close(0)
os.close(1)  # the handler's pipes now get these numbers, as in a daemon started without them
CommandHandler(sys.argv[2], store={"EPHQ_HOME": sys.argv[1]})(m, threading.Event())
"""


def test_a_handler_gets_its_data_when_the_worker_has_no_stdin_or_stdout(
    home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    q.enqueue("s", {"n": 1})
    out = tmp_path / "seen"
    handler = script(tmp_path, f"cat > {out}\nls -l /proc/$$/fd/ > {out}.fds 2>&1\n")
    done = subprocess.run(
        [sys.executable, "-c", CLOSED_STDIO, str(home), handler],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == {"n": 1}
    fds = out.with_suffix(".fds").read_text()
    # Its stdin was the data's pipe and stayed open; no stray copy of it was left open.
    assert fds.count("pipe:") == 2, fds  # stdin, and stderr back to the worker


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_two_workers_short_leases_long_handlers_each_message_once(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    ids = q.enqueue_many("slow", list(range(4)))
    log = tmp_path / "handled"
    handler = script(tmp_path, f'sleep 3\necho "$EPHQ_MESSAGE_ID $EPHQ_ATTEMPT" >> {log}\n')
    workers = [
        start_worker(
            home, "slow", "--exec", handler, "--visibility", "1s", "--concurrency", "2", "--drain"
        )
        for _ in range(2)
    ]
    for w in workers:
        code, err = finish(w, timeout=80)
        assert code == 0, err
    lines = log.read_text().split("\n")[:-1]
    assert Counter(line.split()[0] for line in lines) == Counter(ids)
    assert all(line.split()[1] == "1" for line in lines)  # never redelivered: leases were kept


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_sigterm_lets_the_running_handler_finish(store: str, home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.enqueue("s", "job")
    worker = worker_with_running_handler(home, tmp_path, 1, "--grace", "20s")
    worker.send_signal(signal.SIGTERM)
    code, err = finish(worker)
    assert code == 0, err
    assert "acked 1" in err
    assert q.stats("s").ready == 0 and q.stats("s").inflight == 0


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_after_grace_handlers_are_stopped_and_messages_released(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    mid = q.enqueue("s", "job")
    worker = worker_with_running_handler(home, tmp_path, 60, "--grace", "300ms")
    worker.send_signal(signal.SIGINT)
    code, err = finish(worker)
    assert code == 0, err
    assert "released 1" in err
    m = q.dequeue("s")
    # The interrupted attempt is not counted.
    assert m is not None and (m.id, m.attempts) == (mid, 1)


@pytest.mark.timeout(60)
def test_second_sigint_stops_at_once(home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.enqueue("s", "job")
    worker = worker_with_running_handler(home, tmp_path, 60, "--grace", "60s")
    worker.send_signal(signal.SIGINT)
    time.sleep(0.3)
    worker.send_signal(signal.SIGINT)
    code, err = finish(worker, timeout=20)
    assert code == 130, err
    assert "released 1" in err
    assert q.stats("s").ready == 1


@pytest.mark.timeout(90)
def test_a_worker_started_ignoring_sigint_keeps_ignoring_it(home: Path, tmp_path: Path) -> None:
    """Started in the background of a script (no job control: SIGINT ignored), a worker must
    not be stopped by the Ctrl-C meant for the script; SIGTERM stops it as ever."""
    log = tmp_path / "handled"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    env.update(store_environment(home))
    worker = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            f'trap "" INT; exec {EPHQ} worker s --exec "cat >> {log}; echo >> {log}"',
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    q = open_store(home)
    q.enqueue("s", "one")
    wait_for(lambda: log.exists() and "one" in log.read_text())
    worker.send_signal(signal.SIGINT)
    worker.send_signal(signal.SIGINT)  # a second one would stop it at once (exit 130)
    q.enqueue("s", "two")
    wait_for(lambda: "two" in log.read_text())
    worker.send_signal(signal.SIGTERM)
    code, err = finish(worker)
    assert code == 0, err


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_sigkilled_worker_message_comes_back_after_its_lease(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    mid = q.enqueue("s", "job")
    worker = worker_with_running_handler(home, tmp_path, 60, "--visibility", "1s")
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its handler die together
    worker.wait(timeout=10)
    # Back when its holder is found dead or its lease runs out, whichever comes first (a lease
    # taken by a process that is not a worker keeps its deadline: test_processes.py).
    m = q.dequeue("s", wait=10)
    assert m is not None and (m.id, m.attempts) == (mid, 2)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(180)
@pytest.mark.both_backends
@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_workers_killed_again_and_again_lose_nothing_and_repeat_little(
    store: str, home: Path, tmp_path: Path, concurrency: str
) -> None:
    """Worker after worker is SIGKILLed at a random moment of its run, between and during
    leases, handler starts and acks: every message is handled in the end and settled, and
    only what a killed worker held (running, ended but not yet acked, held ahead) runs again."""
    rng = random.Random(int(concurrency))
    q = open_store(home)
    q.configure("s", max_attempts=1000)  # a message held at several kills is not dead-lettered
    ids = q.enqueue_many("s", list(range(300)))
    log = tmp_path / "handled"
    handler = script(tmp_path, f'echo "$EPHQ_MESSAGE_ID" >> {log}\n')
    # A lease younger than the worker's last announcement of its leases (a tenth of a second)
    # keeps its deadline when the worker dies: a short one, so that it comes back soon.
    run = ("--exec", handler, "-c", concurrency, "--drain", "--visibility", "2s")
    kills = 0
    for _ in range(40):
        stats = q.stats("s")
        if stats.ready == stats.inflight == stats.delayed == 0:
            break
        worker = start_worker(home, "s", *run)
        # Killed after a random number of messages (and a moment more), not after a random
        # time: a fast machine drained the stream before the first kill came.
        target = _lines(log) + rng.randint(1, 25)
        give_up = time.monotonic() + 30
        while worker.poll() is None and _lines(log) < target and time.monotonic() < give_up:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.003))
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)  # the worker alone: its guard ends its handlers
            kills += 1
        worker.communicate(timeout=30)
    assert kills >= 3, "too few workers were killed mid-run to test anything"
    # What the killed workers held comes back (at once if announced, else at its deadline):
    # workers left to finish handle it.
    end = time.monotonic() + 60
    while (stats := q.stats("s")).ready + stats.inflight + stats.delayed > 0:
        assert time.monotonic() < end, stats
        code, err = finish(start_worker(home, "s", *run), timeout=60)
        assert code == 0, err
        time.sleep(0.2)
    handled = Counter(log.read_text().split())
    assert sorted(handled) == ids  # none lost, nothing foreign
    repeats = sum(handled.values()) - len(ids)
    held_at_once = 2 * int(concurrency) + 1  # running, ended unacked, one held ahead
    assert repeats <= kills * held_at_once, (repeats, kills)
    assert q.stats("s").dlq == 0


@pytest.mark.timeout(60)
def test_timeout_kills_the_handler_and_its_children(home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.configure("s", max_attempts=1)
    mid = q.enqueue("s", "job")
    pid_file = tmp_path / "child.pid"
    handler = script(tmp_path, f"sleep 60 &\necho $! > {pid_file}\nsleep 60\n")
    code, err = finish(start_worker(home, "s", "--exec", handler, "--timeout", "500ms", "--drain"))
    assert code == 0, err
    child = int(pid_file.read_text())
    wait_for(lambda: not alive(child), timeout=10)
    assert q.dead_letter("s", mid).metadata["dead"]["error"] == "timed out after 0.5s"


@pytest.mark.timeout(120)
@pytest.mark.both_backends
def test_concurrency_four_handles_500_messages_once_each(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    ids = q.enqueue_many("many", list(range(500)))
    log = tmp_path / "handled"
    handler = script(tmp_path, f"echo $EPHQ_MESSAGE_ID >> {log}\n")
    code, err = finish(
        start_worker(home, "many", "--exec", handler, "--concurrency", "4", "--drain"),
        timeout=110,
    )
    assert code == 0, err
    assert sorted(log.read_text().split()) == ids
    assert q.stats("many") == q.stats("many")._replace(ready=0, inflight=0, delayed=0, dlq=0)


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_max_messages_and_json_logs(store: str, home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.enqueue_many("s", [1, 2, 3])
    code, err = finish(
        start_worker(home, "s", "--exec", "cat > /dev/null", "--max-messages", "2", "--json-logs")
    )
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    assert [r["outcome"] for r in records[:2]] == ["acked", "acked"]
    assert records[2]["summary"]["acked"] == 2
    assert q.stats("s").ready == 1


@pytest.mark.timeout(60)
@pytest.mark.both_backends
@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_max_messages_is_exact_however_many_lease_at_once(
    store: str, home: Path, concurrency: str
) -> None:
    q = open_store(home)
    q.enqueue_many("s", list(range(20)))
    worker = start_worker(
        home, "s", "--exec", "cat > /dev/null", "--max-messages", "5", "-c", concurrency
    )
    code, err = finish(worker)
    assert code == 0, err
    assert err.strip().splitlines()[-1].startswith("ephq worker: handled 5 (acked 5,")
    assert (q.stats("s").ready, q.stats("s").inflight) == (15, 0)


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_dlq_mode_consumes_dead_letters(store: str, home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.configure("s", max_attempts=1)
    q.enqueue("s", "doomed")
    m = q.dequeue("s")
    assert m is not None and m.receipt
    q.nack("s", m.receipt, reason="boom")
    out = tmp_path / "archived"
    code, err = finish(start_worker(home, "s", "--dlq", "--exec", f"cat >> {out}", "--drain"))
    assert code == 0, err
    assert out.read_text() == '"doomed"'
    assert q.stats("s").dlq == 0


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_python_worker_with_a_callable(store: str, home: Path) -> None:
    q = open_store(home)
    q.configure("py", max_attempts=2)
    q.enqueue_many("py", ["fine", "fatal", "flaky"])
    seen: list[str] = []

    def handle(message: Message, cancelled: threading.Event) -> None:
        seen.append(message.data)
        if message.data == "fatal":
            raise PermanentFailure("cannot ever work")
        if message.data == "flaky":
            raise RuntimeError("not today")

    summary = Worker(q, "py", handle, drain=True, retry_delay=0).run()
    assert (summary.acked, summary.dead_lettered, summary.retried) == (1, 2, 1)
    assert seen == ["fine", "fatal", "flaky", "flaky"]
    errors = sorted(d.metadata["dead"]["error"] for d in q.dead_letters("py"))
    assert errors == ["cannot ever work", "not today"]


@pytest.mark.timeout(60)
def test_a_handler_that_calls_sys_exit_fails_its_message_and_no_more(home: Path) -> None:
    """sys.exit() in a handler (a script's habit) is that message's failure, retried and then
    dead-lettered like any other; it ended the handler's thread before, and the worker waited
    for that thread for good."""
    q = open_store(home)
    q.configure("s", max_attempts=2)
    q.enqueue_many("s", [1, 2, 3])

    def handle(message: Message, cancelled: threading.Event) -> None:
        if message.data == 2:
            sys.exit(3)

    summary = Worker(q, "s", handle, drain=True, retry_delay=0).run()
    assert (summary.acked, summary.retried, summary.dead_lettered) == (2, 1, 1)
    (dead,) = q.dead_letters("s")
    assert (dead.data, dead.metadata["dead"]["error"]) == (2, "the handler raised SystemExit(3)")


@pytest.mark.timeout(60)
def test_a_store_that_refuses_an_ack_stops_the_worker_with_its_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error settling a message that is not the store being away (here EACCES, which root
    cannot meet for real) stops the worker and is raised from run(), instead of ending the
    settling thread and leaving the next message waiting for good; the message keeps its
    lease, to be delivered again."""
    q = open_store(home)
    q.enqueue_many("s", [1, 2, 3])

    def refused(stream: str, receipt: str) -> None:
        raise StoragePermissionDenied(f"cannot ack in stream {stream!r}: permission denied")

    monkeypatch.setattr(q, "ack", refused)
    with pytest.raises(StoragePermissionDenied, match="permission denied"):
        Worker(q, "s", lambda m, c: None, drain=True).run()
    stats = q.stats("s")
    assert (stats.ready, stats.inflight) == (2, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_store_that_refuses_a_lease_stops_a_command_worker_with_all_settled(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    """A command worker's cycles lease while handlers run: a lease refused for good (EACCES,
    which root cannot meet for real) stops the worker with that error, once every handler
    that had started has ended and its message is settled."""
    q = open_store(home)
    q.enqueue_many("s", list(range(20)))
    dequeue_many = q.dequeue_many
    leases = 0

    def refused_after_five(*args: object, **kwargs: object) -> list[Message]:
        nonlocal leases
        leases += 1
        if leases > 5:
            raise StoragePermissionDenied("cannot dequeue from stream 's': permission denied")
        return dequeue_many(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(q, "dequeue_many", refused_after_five)
    ran = tmp_path / "ran"
    handler = CommandHandler(f'echo "$EPHQ_MESSAGE_ID" >> {ran}', store=store_environment(home))
    worker = Worker(q, "s", handler, concurrency=concurrency, drain=True)
    with pytest.raises(StoragePermissionDenied, match="permission denied"):
        worker.run()
    handler.close()
    handled = ran.read_text().split()
    assert 1 <= len(handled) <= 5
    assert worker.summary.acked == len(handled)
    stats = q.stats("s")
    assert (stats.ready, stats.inflight) == (20 - worker.summary.acked, 0)


@pytest.mark.timeout(60)
def test_a_store_that_refuses_to_extend_a_lease_stops_the_worker(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that extends running leases must not die of a refusal either (the leases
    would then run out under their handlers, and the messages run twice): the worker stops
    leasing, lets the handler finish and raises the error."""
    q = open_store(home)
    q.enqueue_many("s", [1, 2])

    def refused(stream: str, receipt: str, visibility: float) -> None:
        raise StoragePermissionDenied(f"cannot extend in stream {stream!r}: permission denied")

    monkeypatch.setattr(q, "extend", refused)
    ran: list[int] = []

    def slow(message: Message, cancelled: threading.Event) -> None:
        ran.append(message.data)
        time.sleep(2)  # well past half its one-second lease, when it is extended

    with pytest.raises(StoragePermissionDenied, match="cannot extend"):
        Worker(q, "s", slow, drain=True, visibility=1).run()
    assert ran == [1]  # stopped leasing: the second was never started


@pytest.mark.timeout(60)
def test_an_on_outcome_that_raises_does_not_stop_the_worker(home: Path) -> None:
    """A callback's failure is said, and every message is still handled and settled (a handler
    thread that died of it left the next message waiting for good)."""
    q = open_store(home)
    q.enqueue_many("s", list(range(5)))
    notices: list[str] = []

    def broken(outcome: object) -> None:
        raise OSError(32, "Broken pipe")

    worker = Worker(q, "s", lambda m, c: None, drain=True, on_outcome=broken)
    worker.on_notice = notices.append
    summary = worker.run()
    assert summary.acked == 5
    assert q.stats("s").ready == q.stats("s").inflight == 0
    assert notices and all("on_outcome raised" in n for n in notices)


@pytest.mark.timeout(60)
def test_a_worker_whose_stderr_is_gone_drains_all_the_same(home: Path, tmp_path: Path) -> None:
    """`ephq worker ... 2>&1 | head -1`: once the log's reader has left, lines are dropped and
    every message is still handled; the exit status is the worker's own."""
    q = open_store(home)
    q.enqueue_many("s", list(range(10)))
    done = tmp_path / "done"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    env.update(store_environment(home))
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [EPHQ, "worker", "s", "--exec", f"cat >> {done}; echo >> {done}", "--drain"],
            stdout=subprocess.PIPE,
            stderr=write,
            env=env,
            timeout=50,
            check=False,
        )
    finally:
        os.close(write)
    assert result.returncode == 0
    assert sorted(int(line) for line in done.read_text().split()) == list(range(10))
    assert q.stats("s").ready == q.stats("s").inflight == 0


@pytest.mark.timeout(60)
@pytest.mark.both_backends
def test_idle_worker_wakes_for_a_new_message(store: str, home: Path, tmp_path: Path) -> None:
    done = tmp_path / "done"
    worker = start_worker(home, "idle", "--exec", f"cat > {done}")
    time.sleep(1)
    open_store(home).enqueue("idle", "wake up")
    wait_for(done.exists)
    worker.send_signal(signal.SIGTERM)
    code, err = finish(worker)
    assert code == 0, err
    assert done.read_text() == '"wake up"'


def _strace_attach(pid: int) -> subprocess.Popen[str] | None:
    """Delay every rename and unlink of process pid by two minutes: a disk that does not answer.

    None where strace is missing or may not attach.
    """
    if shutil.which("strace") is None:
        return None
    calls = "rename,renameat,renameat2,unlink,unlinkat"
    tracer = subprocess.Popen(
        [
            *("strace", "-f", "-qq", "-o", "/dev/null", "-p", str(pid)),
            *("-e", f"trace={calls}", "-e", f"inject={calls}:delay_enter=120s"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    # Attached once the tracer shows up as the worker's TracerPid.
    end = time.monotonic() + 10
    while time.monotonic() < end and tracer.poll() is None:
        status = Path(f"/proc/{pid}/status").read_text()
        if f"TracerPid:\t{tracer.pid}" in status:
            return tracer
        time.sleep(0.02)
    tracer.kill()
    tracer.wait()
    return None


@pytest.mark.timeout(90)
def test_sigterm_ends_the_worker_even_when_storage_hangs(home: Path, tmp_path: Path) -> None:
    """A rename that takes two minutes holds the main thread, where Python runs its signal
    handlers; the worker still ends within --grace and a few seconds."""
    q = open_store(home)
    q.enqueue("s", "first")
    log = tmp_path / "stderr"
    handler = script(tmp_path, "true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    with open(log, "w") as err:
        worker = subprocess.Popen(
            [EPHQ, "worker", "s", "--exec", handler, "--grace", "1"],
            env={**env, "EPHQ_HOME": str(home)},
            stderr=err,
            start_new_session=True,
        )
    # One message handled and acked (its log line comes after the ack): the worker is up and
    # long-polling, and no rename of its is under way when strace slows every rename down.
    wait_for(lambda: " acked " in log.read_text())
    tracer = _strace_attach(worker.pid)
    if tracer is None:
        worker.kill()
        pytest.skip("needs strace, allowed to attach to a process")
    try:
        q.enqueue("s", "second")  # its lease, a rename, now takes two minutes
        time.sleep(1)
        sent = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        wait_for(lambda: "not stopped within --grace; exiting now" in log.read_text(), 60)
        took = time.monotonic() - sent
    finally:
        # The thread strace holds in its delay stays stopped until the tracer lets go.
        tracer.kill()
        tracer.wait()
    assert worker.wait(timeout=30) == 130
    assert took < 60  # well before the stuck call would have returned (120 s)
    m = q.dequeue("s")  # the lease never happened: the message is there for the next worker
    assert m is not None and m.data == "second"
    assert q.check() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("command", "why"),
    [("./does-not-exist.sh", "exit 127, not found"), ("{not_executable}", "exit 126, not exec")],
)
@pytest.mark.both_backends
def test_a_handler_that_cannot_run_stops_the_worker_and_spends_nothing(
    store: str, home: Path, tmp_path: Path, command: str, why: str
) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")  # no execute bit
    q = open_store(home)
    ids = q.enqueue_many("s", list(range(10)))
    worker = start_worker(home, "s", "--exec", command.format(not_executable=plain))
    code, err = finish(worker)
    assert code == 9
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ephq worker: stopped: the handler could not be run: {why}")
    assert last.endswith("; messages were given back uncounted")
    assert q.dead_letters("s") == []
    back = q.dequeue_many("s", 20)
    assert sorted(m.id for m in back) == ids
    assert {m.attempts for m in back} == {1}  # this lease is the first that counts


@pytest.mark.timeout(60)
def test_a_handlers_many_lines_of_stderr_stay_on_its_one_log_line(
    home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    q.configure("s", max_attempts=1)
    mid = q.enqueue("s", "x")
    handler = script(tmp_path, "printf 'first\\nsecond\\tcol\\\\end\\n' >&2\nexit 3\n")
    code, err = finish(start_worker(home, "s", "--exec", handler, "--drain"))
    assert code == 0
    (line,) = [line for line in err.splitlines() if f" s {mid} attempt=1 " in line]
    assert line.endswith("s: exit 3; stderr: first\\nsecond\\tcol\\\\end")
    assert q.dead_letter("s", mid).metadata["dead"]["error"] == (
        "exit 3; stderr: first\nsecond\tcol\\end"  # the dead letter keeps the text as it was
    )


@pytest.mark.timeout(60)
def test_the_stopped_line_keeps_a_broken_handlers_stderr_on_one_line(
    home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    q.enqueue("s", 1)
    handler = script(tmp_path, "echo 'first' >&2\necho 'second' >&2\nexit 127\n")
    code, err = finish(start_worker(home, "s", "--exec", handler))
    assert code == 9
    last = err.strip().splitlines()[-1]
    assert last.startswith("ephq worker: stopped: the handler could not be run: exit 127")
    assert "stderr: first\\nsecond; messages were given back uncounted" in last


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_a_killed_workers_leases_come_back_long_before_their_deadline(
    store: str, home: Path, tmp_path: Path
) -> None:
    """A worker holding a ten-minute lease is SIGKILLed the moment its handler has started:
    the lease was announced before the handler started, so another consumer gets the message
    in seconds, as the next delivery; the dead worker's receipt is then fenced."""
    q = open_store(home)
    q.enqueue("s", "quick")  # (the worker's first lease, announced as its keeper starts)
    mid = q.enqueue("s", "job")
    started = tmp_path / "started"
    handler = script(
        tmp_path,
        f'read -r data\n[ "$data" = \'"quick"\' ] && exit 0\ntouch {started}\nexec sleep 120\n',
    )
    worker = start_worker(home, "s", "--exec", handler, "--visibility", "10m")
    try:
        end = time.monotonic() + 30
        while not started.exists():  # then at once, well inside the keeper's round
            assert time.monotonic() < end, "the handler never started"
            time.sleep(0.001)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker (its guard ends its handler)
        worker.wait(timeout=30)
    # (Its announcement may look alive a moment more on PostgreSQL: the server has yet to see
    # the session end. The dequeue below waits for that.)
    (held,) = q.leases("s")
    again = q.dequeue("s", visibility=60, wait=30)  # not ten minutes: within seconds
    assert again is not None and again.id == mid and again.attempts == 2
    assert held.deadline.timestamp() > time.time() + 500  # the old lease had not run out
    q.ack("s", again.receipt or "")
    assert q.stats("s").inflight == 0


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is pid, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _kill_worker_running(
    q: Queue, home: Path, tmp_path: Path, body: str, pid_files: list[Path]
) -> tuple[list[int], int]:
    """Start a worker whose handler runs body, which writes pid_files; once they are written
    and the lease announced, SIGKILL the worker alone (as the OOM killer would, not its
    process group). The pids the files held, and the worker's guard's."""
    handler = script(tmp_path, body)
    worker = start_worker(home, "s", "--exec", handler, "--visibility", "10m")
    try:
        for pid_file in pid_files:
            wait_for(lambda f=pid_file: f.exists() and f.read_text().strip() != "")
        # announced before its handler started (else it would keep its deadline)
        assert any(lease.holder is not None for lease in q.leases("s"))
        (guard,) = [pid for pid, cmd in _children(worker.pid).items() if MARK in cmd]
        pids = [int(pid_file.read_text()) for pid_file in pid_files]
        assert all(alive(pid) for pid in pids)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    return pids, guard


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_a_killed_workers_handlers_die_with_it(store: str, home: Path, tmp_path: Path) -> None:
    """Only the worker is SIGKILLed: its handler, in a session of its own, and the handler's
    own child are killed too, before the message is delivered again, so it never runs twice at
    once; the guard that did it is gone as well."""
    q = open_store(home)
    mid = q.enqueue("s", "job")
    shell_pid, child_pid = tmp_path / "shell.pid", tmp_path / "child.pid"
    body = f"echo $$ > {shell_pid}\nsleep 120 &\necho $! > {child_pid}\nwait\n"
    pids, guard = _kill_worker_running(q, home, tmp_path, body, [shell_pid, child_pid])
    wait_for(lambda: not any(alive(pid) for pid in [*pids, guard]))
    again = q.dequeue("s", wait=30)  # given back when the worker's holder is found dead
    assert again is not None and (again.id, again.attempts) == (mid, 2)


def _in_own_session(pid_file: Path) -> str:
    """A line of shell that starts a sleeper in a session of its own, its pid in pid_file and
    its session's id in pid_file.sid (holding none of the worker's pipes, which the test reads
    to their end)."""
    sid = f"read -r _ _ _ _ _ sid _ < /proc/$$/stat; echo $sid > {pid_file}.sid"
    return (
        f"setsid sh -c '{sid}; echo $$ > {pid_file}; exec sleep 120' </dev/null >/dev/null 2>&1 &\n"
    )


@pytest.mark.timeout(90)
def test_what_a_handler_put_in_a_session_of_its_own_dies_with_a_killed_worker(
    home: Path, tmp_path: Path
) -> None:
    """The guard's table knows the handler's process group, not a session the handler made
    (setsid): what carries the worker's token in its environment is killed too."""
    q = open_store(home)
    mid = q.enqueue("s", "job")
    shell_pid, loner_pid = tmp_path / "shell.pid", tmp_path / "loner.pid"
    body = f"echo $$ > {shell_pid}\n{_in_own_session(loner_pid)}sleep 120\n"
    pids, _ = _kill_worker_running(q, home, tmp_path, body, [shell_pid, loner_pid])
    try:
        assert int(Path(f"{loner_pid}.sid").read_text()) == pids[1]  # a session of its own
        wait_for(lambda: not any(alive(pid) for pid in pids))
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    again = q.dequeue("s", wait=30)
    assert again is not None and (again.id, again.attempts) == (mid, 2)


@pytest.mark.timeout(60)
def test_a_worker_that_ends_cleanly_kills_nothing_its_handlers_left(
    home: Path, tmp_path: Path
) -> None:
    """A clean end tells the guard so: what a handler deliberately left running (here in a
    session of its own, so the worker does not wait for it) outlives the worker."""
    q = open_store(home)
    q.enqueue("s", "job")
    loner_pid = tmp_path / "loner.pid"
    handler = script(tmp_path, _in_own_session(loner_pid))
    worker = start_worker(home, "s", "--exec", handler, "--drain")
    code, err = finish(worker)
    assert code == 0, err
    wait_for(lambda: loner_pid.exists() and loner_pid.read_text().strip() != "")
    pid = int(loner_pid.read_text())
    try:
        assert alive(pid)  # (the worker reaped its guard before it exited)
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_worker_that_ends_leaves_no_guard_behind(home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.enqueue_many("s", [1, 2, 3])
    worker = start_worker(home, "s", "--exec", "cat >/dev/null; sleep 0.2", "--drain")
    wait_for(lambda: any(MARK in cmd for cmd in _children(worker.pid).values()))
    (guard,) = [pid for pid, cmd in _children(worker.pid).items() if MARK in cmd]
    code, err = finish(worker)
    assert code == 0, err
    assert "handled 3 (acked 3" in err
    assert not alive(guard)  # ended with the worker, not left behind


def _run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_quick_handlers_get_one_message_ahead_and_slow_ones_none(store: str, home: Path) -> None:
    """While its handlers are quick a worker holds one message beyond those running; after a
    slow one it holds none, so another consumer gets what it cannot start."""
    q = open_store(home)
    ids = q.enqueue_many("s", [{"n": i} for i in range(12)])
    slow, held, third, fourth = ids[8:]
    ran: list[str] = []
    started = {slow: threading.Event(), held: threading.Event()}
    go = {slow: threading.Event(), held: threading.Event()}

    def handler(m: Message, cancelled: threading.Event) -> None:
        ran.append(m.id)
        time.sleep(0.002)  # quick, but not so quick that nothing could overlap it
        if m.id in started:
            started[m.id].set()
            go[m.id].wait(60)
        if m.id == slow:
            time.sleep(0.6)  # slower than lookahead_within, whatever the machine does

    worker = Worker(q, "s", handler, lookahead_within=0.5)
    thread = _run_in_thread(worker)
    assert started[slow].wait(60)
    wait_for(lambda: q.stats("s").inflight == 2)  # the slow one, and the next held ahead
    go[slow].set()
    assert started[held].wait(60)
    time.sleep(0.3)  # time enough for a worker that wrongly looks ahead to lease again
    other = q.dequeue_many("s", 10)
    assert [m.id for m in other] == [third, fourth]
    worker.stop()
    go[held].set()
    thread.join(60)
    assert ran == ids[:10]
    assert worker.summary.acked == 10


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_a_message_held_ahead_is_given_back_unrun_when_the_worker_stops(
    store: str, home: Path
) -> None:
    q = open_store(home)
    ids = q.enqueue_many("s", [{"n": i} for i in range(10)])
    blocker, held = ids[8:]
    ran: list[str] = []
    started, go = threading.Event(), threading.Event()

    def handler(m: Message, cancelled: threading.Event) -> None:
        ran.append(m.id)
        time.sleep(0.002)
        if m.id == blocker:
            started.set()
            go.wait(60)

    worker = Worker(q, "s", handler, lookahead_within=5.0)
    thread = _run_in_thread(worker)
    assert started.wait(60)
    wait_for(lambda: q.stats("s").inflight == 2)
    worker.stop()
    go.set()
    thread.join(60)
    assert ran == ids[:9]  # the one held ahead never ran
    assert (worker.summary.acked, worker.summary.released) == (9, 1)
    (back,) = q.dequeue_many("s", 10)
    assert (back.id, back.attempts) == (held, 1)  # a release does not spend an attempt


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_quick_python_handlers_run_in_order_and_a_stop_still_reaches_one(
    store: str, home: Path
) -> None:
    """Handlers that return at once run on the leasing thread (no hop to a handler thread);
    they still run in FIFO order, each settled, and when one then blocks, a stop with now
    cancels it and its message goes back."""
    q = open_store(home)
    ids = q.enqueue_many("s", [{"n": i} for i in range(30)])
    blocker = ids[20]
    ran: list[str] = []
    started = threading.Event()

    def handler(m: Message, cancelled: threading.Event) -> None:
        ran.append(m.id)
        if m.id == blocker:
            started.set()
            if not cancelled.wait(60):
                raise AssertionError("never cancelled")
            raise Cancelled("stopped")

    worker = Worker(q, "s", handler)
    thread = _run_in_thread(worker)
    assert started.wait(60)
    worker.stop(now=True)
    thread.join(60)
    assert not thread.is_alive()
    assert ran == ids[:21]
    assert (worker.summary.acked, worker.summary.released) == (20, 1)
    back = q.dequeue_many("s", 20)
    assert [m.id for m in back] == ids[20:]
    assert back[0].attempts == 1  # the cancelled attempt did not count


def _handler_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("ephq-handler", "ephq-settler", "ephq-cycle"))
    ]


def _blocking_script(tmp_path: Path, ran: Path, blockers: dict[str, float]) -> str:
    """A shell handler that logs each message's id to ran; for each blocker id, it touches
    started-ID, waits for go-ID, then sleeps the given seconds."""
    cases = "".join(
        f"  {mid}) touch {tmp_path}/started-{mid}; "
        f"while [ ! -e {tmp_path}/go-{mid} ]; do sleep 0.01; done; sleep {seconds};;\n"
        for mid, seconds in blockers.items()
    )
    return f'echo "$EPHQ_MESSAGE_ID" >> {ran}\ncase "$EPHQ_MESSAGE_ID" in\n{cases}esac\n'


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_one_command_at_a_time_runs_on_one_thread_and_a_message_held_ahead_goes_back_unrun(
    store: str, home: Path, tmp_path: Path
) -> None:
    """At concurrency 1 a command's whole cycle runs on the worker's own thread, no handler
    thread: it still holds one message ahead of quick handlers, runs all in order, and gives
    the one held back unrun when stopped."""
    q = open_store(home)
    ids = q.enqueue_many("s", [{"n": i} for i in range(10)])
    blocker, held = ids[8:]
    ran = tmp_path / "ran"
    command = _blocking_script(tmp_path, ran, {blocker: 0})
    handler = CommandHandler(command, store=store_environment(home))
    worker = Worker(q, "s", handler, lookahead_within=5.0)
    thread = _run_in_thread(worker)
    wait_for((tmp_path / f"started-{blocker}").exists, 60)
    wait_for(lambda: q.stats("s").inflight == 2)  # the blocker, and the next held ahead
    assert _handler_threads() == []  # nor a cycle thread: the worker's own runs it
    worker.stop()
    (tmp_path / f"go-{blocker}").touch()
    thread.join(60)
    handler.close()
    assert ran.read_text().split() == ids[:9]  # in order; the one held ahead never ran
    assert (worker.summary.acked, worker.summary.released) == (9, 1)
    (back,) = q.dequeue_many("s", 10)
    assert (back.id, back.attempts) == (held, 1)  # a release does not spend an attempt


@pytest.mark.timeout(90)
@pytest.mark.both_backends
def test_after_a_slow_command_none_is_held_ahead(store: str, home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    ids = q.enqueue_many("s", [{"n": i} for i in range(12)])
    slow, held, third, fourth = ids[8:]
    ran = tmp_path / "ran"
    # Slower than lookahead_within, whatever the machine does.
    command = _blocking_script(tmp_path, ran, {slow: 0.6, held: 0})
    handler = CommandHandler(command, store=store_environment(home))
    worker = Worker(q, "s", handler, lookahead_within=0.5)
    thread = _run_in_thread(worker)
    wait_for((tmp_path / f"started-{slow}").exists, 60)
    wait_for(lambda: q.stats("s").inflight == 2)  # the slow one, and the next held ahead
    (tmp_path / f"go-{slow}").touch()
    wait_for((tmp_path / f"started-{held}").exists, 60)
    time.sleep(0.3)  # time enough for a worker that wrongly looks ahead to lease again
    other = q.dequeue_many("s", 10)
    assert [m.id for m in other] == [third, fourth]
    worker.stop()
    (tmp_path / f"go-{held}").touch()
    thread.join(60)
    handler.close()
    assert ran.read_text().split() == ids[:10]
    assert worker.summary.acked == 10


@pytest.mark.timeout(60)
def test_a_handler_that_cannot_start_is_retried_like_any_failure(home: Path) -> None:
    """A handler started apart whose start fails (no process could be made) is a temporary
    failure: the message is retried, not lost and not acked."""

    class NoProcessAtFirst:
        def __init__(self) -> None:
            self.starts = 0
            self.ran: list[str] = []

        def __call__(self, message: Message, cancelled: threading.Event) -> None:
            raise AssertionError("a handler that starts apart is never called whole")

        def start_handler(self, message: Message, cancelled: threading.Event) -> Callable[[], None]:
            self.starts += 1
            if self.starts == 1:
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
            return functools.partial(self.ran.append, message.id)

    q = open_store(home)
    mid = q.enqueue("s", 1)
    handler = NoProcessAtFirst()
    outcomes: list[Outcome] = []
    worker = Worker(
        q, "s", handler, drain=True, drain_retries=30, retry_delay=0.05, on_outcome=outcomes.append
    )
    worker.run()
    assert [o.result for o in outcomes] == ["retry", "acked"]
    assert "Resource temporarily unavailable" in outcomes[0].detail
    assert handler.ran == [mid]
    assert q.stats("s").ready == 0


def test_an_empty_command_is_refused_before_anything_runs() -> None:
    """`sh -c ''` exits 0: a worker with an empty command would ack every message unrun."""
    for command in ("", "  \n\t"):
        with pytest.raises(BadInput, match="command is empty"):
            CommandHandler(command, store={})


def test_a_guard_that_cannot_start_says_why_and_the_handler_still_runs(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ephq.worker.command import CommandHandler

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    notices: list[str] = []
    handler = CommandHandler(f"cat > {tmp_path / 'got'}", store={"EPHQ_HOME": str(home)})
    handler.on_notice = notices.append
    q = open_store(home)
    q.enqueue("s", {"n": 1})
    m = q.dequeue("s")
    assert m is not None
    handler(m, threading.Event())  # runs, unguarded
    handler.close()
    assert (tmp_path / "got").read_text() == '{"n":1}'
    (notice,) = notices
    assert "cannot start the handler guard" in notice and "no-python-here" in notice


def test_a_worker_that_cannot_start_its_handler_threads_says_so_and_leases_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host out of threads (ulimit -u, which root is not held to: hence the refusal made
    here, at the third handler thread) is one error naming the concurrency, not a traceback
    from a thread's start; what started ends, and nothing was leased."""
    q = Queue(home, keep_leases=False)
    q.enqueue("s", 1)
    real_start = threading.Thread.start
    handlers: list[str] = []

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith("ephq-handler-"):
            if len(handlers) == 2:
                raise RuntimeError("can't start new thread")
            handlers.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    worker = Worker(q, "s", lambda m, c: None, concurrency=5, drain=True)
    before = set(threading.enumerate())  # (other tests' Queues may keep a thread of theirs)
    with pytest.raises(BadInput, match=r"cannot start 5 handler threads \(.* after 2\)"):
        worker.run()
    assert q.stats("s").ready == 1
    assert not [t for t in threading.enumerate() if t not in before]
