"""Long-polling (woken by other processes, cheap while idle) and what importing the engine costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ephq import Queue


def _enqueue_later(home: Path, delay_s: float, data: object) -> subprocess.Popen[bytes]:
    code = (
        "import sys, time; from ephq import Queue; time.sleep(float(sys.argv[2]));"
        "Queue(sys.argv[1]).enqueue('w', sys.argv[3])"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(home), str(delay_s), str(data)])


@pytest.mark.timeout(60)
def test_wait_is_woken_by_an_enqueue_in_another_process(realq: Queue, home: Path) -> None:
    realq.enqueue("w", "warm-up")  # the stream exists, so the waiter watches its bell
    first = realq.dequeue("w")
    assert first is not None
    start = time.monotonic()  # before the producer starts its half-second sleep
    producer = _enqueue_later(home, 0.5, "hello")
    m = realq.dequeue("w", wait=30)
    waited = time.monotonic() - start
    producer.wait(timeout=30)
    assert m is not None and m.data == "hello"
    assert 0.5 <= waited < 20  # woken by the enqueue, long before the wait ran out


@pytest.mark.timeout(60)
def test_wait_on_a_stream_that_does_not_exist_yet(realq: Queue, home: Path) -> None:
    producer = _enqueue_later(home, 0.3, "first")
    m = realq.dequeue("w", wait=30)
    producer.wait(timeout=30)
    assert m is not None and m.data == "first"


def test_wait_runs_out_with_nothing(realq: Queue) -> None:
    start = time.monotonic()
    assert realq.dequeue_many("w", 3, wait=0.3) == []
    assert time.monotonic() - start >= 0.3


@pytest.mark.timeout(60)
def test_wait_sees_a_delayed_message_come_due(realq: Queue) -> None:
    """Not before it is due, and long before the wait runs out, however slow the enqueue was."""
    start = time.monotonic()
    realq.enqueue("w", "later", delay=0.4)
    m = realq.dequeue("w", wait=30)
    got_at = time.time()
    assert m is not None and m.data == "later"
    assert got_at >= m.enqueued_at.timestamp() + 0.4  # the engine's clock: the wall clock
    assert time.monotonic() - start < 20


@pytest.mark.timeout(60)
def test_wait_sees_an_expired_lease_of_another_thread(realq: Queue, home: Path) -> None:
    realq.enqueue("w", "job")
    other = Queue(home)
    held = other.dequeue("w", visibility=0.5)
    assert held is not None
    m = realq.dequeue("w", wait=30)
    assert m is not None and (m.id, m.attempts) == (held.id, 2)


def _inotify_instances() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return count


def test_waits_on_many_streams_in_turn_keep_a_few_watches(home: Path) -> None:
    """A bell's inotify instance is kept for the next wait on its stream. Waiting on one stream
    after another kept one for each, for good: at 128 streams every instance the user may
    have (fs.inotify.max_user_instances), so that other programs of the user could watch
    nothing, and one descriptor each."""
    from ephq.idle import MOST_KEPT

    q = Queue(home, keep_leases=False)
    before = _inotify_instances()
    try:
        for n in range(40):
            q.enqueue(f"w{n}", n)
            assert q.dequeue(f"w{n}", visibility=600) is not None
            assert q.dequeue(f"w{n}", wait=0.001) is None
        assert _inotify_instances() - before == MOST_KEPT
        later = threading.Timer(0.2, q.enqueue, ("w0", "again"))  # a bell closed, made anew
        later.start()
        got = q.dequeue("w0", wait=30)
        later.join()
        assert got is not None and got.data == "again"
    finally:
        q.close()
    assert _inotify_instances() == before


@pytest.mark.timeout(60)
def test_waiting_does_not_burn_cpu(home: Path) -> None:
    code = (
        "import resource, sys; from ephq import Queue; q = Queue(sys.argv[1]);"
        "q.enqueue('idle', 0); q.dequeue('idle', visibility=3600);"
        "before = resource.getrusage(resource.RUSAGE_SELF);"
        "assert q.dequeue('idle', wait=2) is None;"
        "after = resource.getrusage(resource.RUSAGE_SELF);"
        "print(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home)], capture_output=True, text=True, check=True
    )
    cpu_seconds = float(out.stdout)
    assert cpu_seconds < 0.2, f"waiting 2 s used {cpu_seconds:.3f} s of CPU"


def test_many_threads_share_one_queue(realq: Queue) -> None:
    ids = realq.enqueue_many("t", list(range(200)))
    got: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        while (m := realq.dequeue("t")) is not None:
            assert m.receipt is not None
            realq.ack("t", m.receipt)
            with lock:
                got.append(m.id)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == ids


def test_engine_imports_no_cli_or_lock_libraries(home: Path) -> None:
    code = (
        "import sys, json; from ephq import Queue; q = Queue(sys.argv[1]);"
        "q.enqueue('s', 1); m = q.dequeue('s'); q.ack('s', m.receipt);"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'typer', 'click', 'rich', 'platformdirs', 'ephq.cli', 'ephq.worker'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_a_command_loads_no_module_only_some_need(home: Path) -> None:
    """Every command pays its start-up: what only some operations need (hashing a dedup key,
    a socket, ctypes for waiting, the database driver) is imported when they run."""
    code = (
        "import sys, json; import ephq.cli.main; from ephq import Queue;"
        "q = Queue(sys.argv[1], keep_leases=False); q.enqueue('s', 1); m = q.dequeue('s');"
        "q.ack('s', m.receipt); q.stats('s');"
        "print(json.dumps(sorted(m for m in sys.modules if m in "
        "{'hashlib', '_hashlib', 'socket', 'ctypes', 'psycopg', 'ssl'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_a_worker_running_one_handler_at_a_time_loads_no_ctypes(home: Path) -> None:
    """ctypes starts handlers only when several run at once (spawning.py): a worker at
    concurrency 1 (a cron job's `--drain`, say) does not pay its import; at 2 it does."""
    Queue(str(home)).enqueue("s", 1)
    loaded = {}
    for concurrency in ("1", "2"):
        code = (
            "import sys, atexit; atexit.register(lambda: print('ctypes' in sys.modules));"
            "sys.argv = ['ephq', 'worker', 's', '--exec', 'true', '--drain', "
            f"'--concurrency', '{concurrency}']; from ephq.cli.main import main; main()"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "EPHQ_HOME": str(home)},
        )
        loaded[concurrency] = out.stdout.strip()
    assert loaded == {"1": "False", "2": "True"}


def test_the_entry_point_freezes_what_the_imports_made() -> None:
    """Short commands spent about a sixth of their run collecting at exit what Typer, Click
    and ephq made at import (docs/benchmarks.md, "Start-up"): the entry point freezes it."""
    code = (
        "import gc, sys; from ephq.cli import main as entry;"
        "entry.main = lambda: print(gc.get_freeze_count()) or 0; entry.run()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 10_000  # about 18,000 here: Typer, Click, ephq
