"""The PostgreSQL backend against a real server: the CLI over TCP, workers on several
"hosts" (processes) with SIGKILL, dropped connections and a server restart, an unreachable
server, and a missing driver."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ephq import Queue, StreamConfig, Unavailable, keeping
from ephq.postgres import holders, schema
from tests.conftest import fresh_database
from tests.pgserver import Server, binaries
from tests.test_cli import EPHQ

pytestmark = pytest.mark.timeout(180)


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    return env | {"EPHQ_URL": url}


def _run(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EPHQ, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(url),
        timeout=60,
        check=False,
    )


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _handler(tmp_path: Path, seconds: float) -> tuple[str, Path]:
    """A handler that logs when each delivery starts and ends (appends: atomic lines)."""
    log = tmp_path / "handled.log"
    script = tmp_path / "handler.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "start $EPHQ_MESSAGE_ID $EPHQ_ATTEMPT $$ $(date +%s.%N)" >> {log}\n'
        f"sleep {seconds}\n"
        f'echo "end $EPHQ_MESSAGE_ID $EPHQ_ATTEMPT $$ $(date +%s.%N)" >> {log}\n'
    )
    script.chmod(0o755)
    return str(script), log


def _deliveries(log: Path) -> dict[str, list[tuple[float, float | None]]]:
    """Each message's deliveries: (start, end or None if its handler was killed)."""
    starts: dict[tuple[str, str], float] = {}
    ends: dict[tuple[str, str], float] = {}
    for line in log.read_text().splitlines():
        kind, mid, attempt, pid, when = line.split()
        (starts if kind == "start" else ends)[(mid, attempt + "/" + pid)] = float(when)
    found: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    for (mid, key), start in starts.items():
        found[mid].append((start, ends.get((mid, key))))
    return found


def test_the_cli_round_trip_over_tcp(database_server: str) -> None:
    url = fresh_database(database_server)
    ids = _run(url, "enqueue", "jobs", "--lines", stdin='{"n": 1}\n{"n": 2}\n').stdout.split()
    leased = _run(url, "dequeue", "jobs", "--max", "2")
    assert [json.loads(line)["id"] for line in leased.stdout.splitlines()] == ids
    assert _run(url, "ack", "jobs", "-", stdin=leased.stdout).returncode == 0
    stats = json.loads(_run(url, "stats", "jobs", "--json").stdout)
    assert (stats["ready"], stats["inflight"]) == (0, 0)
    missing = _run(url, "stats", "typo")
    assert missing.returncode == 4 and "no stream 'typo'" in missing.stderr
    assert _run(url, "check").returncode == 0


def test_a_stream_rings_only_its_own_consumers(database_server: str) -> None:
    """Enqueues, a group's next message coming out and a dead letter forwarded each notify the
    channel of the stream that gets a visible message, and no other: a consumer waiting on one
    stream is not woken by the traffic of the others."""
    url = fresh_database(database_server)
    q = Queue(url=url, keep_leases=False)
    q.configure("orders", max_attempts=1, dead_letter_stream="orders-dead")
    with psycopg.connect(url, autocommit=True) as listener:

        def listen(stream: str) -> None:
            channel = listener.execute("SELECT ephq.channel(%s)", (stream,)).fetchone()
            assert channel is not None and channel[0] != "ephq"
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel[0])))

        def heard() -> list[str]:
            return [n.payload for n in listener.notifies(timeout=0.5, stop_after=None)]

        listen("orders-dead")
        q.enqueue("other", 1)
        q.enqueue_many("orders", [1, 2], groups=["g", "g"])
        assert heard() == []  # neither is orders-dead's
        listen("orders")
        m = q.dequeue("orders")
        assert m is not None and m.receipt
        q.nack("orders", m.receipt, reason="broken")  # its last attempt: forwarded
        assert set(heard()) == {"orders", "orders-dead"}  # g's next message is out; the dead one
        q.enqueue("other", 2)
        assert heard() == []


def _connections_of_this_process(url: str) -> int:
    """How many connections ephq has open to the server from this process."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"ephq % {os.getpid()}",),
        ).fetchone()
    return int(row[0]) if row else -1


def test_a_threads_connection_goes_when_the_thread_has_ended(database_server: str) -> None:
    """A connection per thread, and a thread per task (a web server's, a pool's that renews
    its threads): the connections of threads that have ended are closed, not kept until the
    server refuses every client."""
    url = fresh_database(database_server)
    q = Queue(url=url, keep_leases=False)

    for n in range(40):
        task = threading.Thread(target=q.enqueue, args=("t", n))
        task.start()
        task.join()
    assert q.stats("t").ready == 40  # this thread's connection, and the last task's yet
    _until(
        lambda: _connections_of_this_process(url) <= 2, "the ended threads' connections to close"
    )
    q.close()


def test_leases_of_many_streams_are_announced_on_one_connection(database_server: str) -> None:
    """A Queue keeping leases announces them per stream, each row believed while the
    connection that wrote it lives: one connection for all (it was one per stream, and a
    process consuming many streams used up the server's connections)."""
    url = fresh_database(database_server)
    q = Queue(url=url)  # keeping leases
    for n in range(20):
        q.enqueue(f"s{n}", n)
        assert q.dequeue(f"s{n}") is not None

    def announced(stream: str) -> bool:
        return [lease.holder and lease.holder["pid"] for lease in q.leases(stream)] == [os.getpid()]

    _until(lambda: announced("s0") and announced("s19"), "the leases to be announced")
    assert _connections_of_this_process(url) == 2  # the statements', and the announcements'
    q.close()
    _until(lambda: _connections_of_this_process(url) == 0, "the connections to close")
    with Queue(url=url) as fresh:
        assert fresh.leases("s0")[0].holder is None  # its row went with the Queue


def test_a_process_working_through_many_streams_notes_a_bounded_number(
    database_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a process notes per stream (the streams it made, when to look for a dead worker's
    leases and to sweep old dedup keys next) grew with every stream it ever used. Past
    MOST_STREAMS it is forgotten, and a stream whose notes were forgotten works as before
    (what is due after a note is forgotten is due at once)."""
    from ephq.postgres import backend

    monkeypatch.setattr(backend, "MOST_STREAMS", 8)
    url = fresh_database(database_server)
    q = Queue(url=url, keep_leases=False)
    try:
        first = q.enqueue("s0", "first", dedup_key="k")
        for n in range(30):
            q.enqueue(f"s{n}", n, dedup_key="k")
            got = q.dequeue(f"s{n}")
            assert got is not None and got.receipt is not None
            q.ack(f"s{n}", got.receipt)
        notes = q._backend
        assert isinstance(notes, backend.PostgresBackend)
        sizes = [len(notes._known_streams), len(notes._orphans_next), len(notes._keys_swept)]
        assert 0 < max(sizes) <= 8, sizes
        assert q.enqueue("s0", "again", dedup_key="k") == first  # its notes forgotten
        q.enqueue("s0", "job")
        got = q.dequeue("s0")
        assert got is not None and got.data == "job"
    finally:
        q.close()


def test_waits_on_many_streams_in_turn_keep_a_few_connections(database_server: str) -> None:
    """A listener is kept for the next wait on its stream; waiting on one stream after another
    kept a connection for each, for good, until the server's max_connections refused the
    next (another program's too)."""
    from ephq.idle import MOST_KEPT

    url = fresh_database(database_server)
    q = Queue(url=url, keep_leases=False)
    try:
        for n in range(MOST_KEPT + 6):
            assert q.dequeue(f"w{n}", wait=0.01) is None
        assert _connections_of_this_process(url) == 1 + MOST_KEPT  # the statements' and those
        later = threading.Timer(0.2, q.enqueue, ("w0", 1))  # a stream whose listener was closed
        later.start()
        got = q.dequeue("w0", wait=30)
        later.join()
        assert got is not None and got.data == 1
    finally:
        q.close()
    _until(lambda: _connections_of_this_process(url) == 0, "the connections to close")


def test_a_holder_written_anew_takes_no_other_holders_row(database_server: str) -> None:
    """A keeper whose row's connection ended writes its row anew and deletes the old one: only
    if the old one is still its own. With the schema made anew (ids from 1 again), another
    process's row had that id, and its leases went unsaid for good (a worker test failed so)."""
    url = fresh_database(database_server)
    first = Queue(url=url)  # keeping leases; its row is the table's first
    first.enqueue("a", 1)
    assert first.dequeue("a") is not None
    _until(lambda: first.leases("a")[0].holder is not None, "the first lease announced")
    fresh_database(url)  # its connections ended, the table made anew below
    second = Queue(url=url)
    second.enqueue("b", 2)
    assert second.dequeue("b") is not None
    _until(lambda: second.leases("b")[0].holder is not None, "the second lease announced")
    time.sleep(2 * keeping.REPUBLISH_EVERY_S + 1)  # the first writes its row anew meanwhile
    assert second.leases("b")[0].holder is not None
    first.close()
    second.close()


def test_waits_share_a_listening_connection_and_close_it(database_server: str) -> None:
    """A waiting dequeue listens on a connection of its own; the next wait takes the same one
    (each used to make one, and leave it to the garbage collector), and close() closes it."""
    url = fresh_database(database_server)
    q = Queue(url=url, keep_leases=False)

    q.enqueue("w", 1)
    assert len(q.dequeue_many("w", 5, wait=0.05)) == 1  # there at once: no wait, no listener
    assert _connections_of_this_process(url) == 1
    for _ in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            assert q.dequeue_many("w", 5, wait=0.05) == []
            gc.collect()
        assert _connections_of_this_process(url) == 2
    # Between waits it listens to nothing: a session that listens and is not read would, once
    # its socket is full, hold up the server's notification queue and so every NOTIFY.
    idle = q._backend._listeners._idle  # type: ignore[attr-defined]
    kept = idle.take("w")
    assert kept._conn.execute("SELECT pg_listening_channels()").fetchall() == []
    idle.give_back("w", kept)
    later = threading.Timer(0.2, q.enqueue, ("w", 2))  # what comes during the next wait
    later.start()
    got = q.dequeue_many("w", 5, wait=30)
    later.join()
    assert [m.data for m in got] == [2]
    q.close()
    _until(lambda: _connections_of_this_process(url) == 0, "the connections to close")


def test_workers_on_several_hosts_lose_nothing_when_one_is_killed(
    database_server: str, tmp_path: Path
) -> None:
    """Three worker processes over TCP; one is SIGKILLed (with its handlers) mid-lease. Every
    message is handled, and no message is ever handled by two deliveries at once."""
    url = fresh_database(database_server)
    with Queue(url=url) as q:
        ids = set(q.enqueue_many("work", list(range(60))))
    handler, log = _handler(tmp_path, 0.15)
    workers = [
        subprocess.Popen(
            [
                EPHQ,
                "worker",
                "work",
                "--exec",
                handler,
                "--concurrency",
                "2",
                "--visibility",
                "2s",
                "--grace",
                "0",
            ],
            env=_env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(3)
    ]
    victim = workers[0]
    try:
        _until(lambda: log.exists() and log.read_text().count("start") >= 10, "work to start")
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and the handlers it runs
        killed_at = time.time()
        victim.wait(timeout=30)
        with Queue(url=url) as q:
            _until(
                lambda: (s := q.stats("work")).ready + s.inflight + s.delayed == 0,
                "every message to be settled",
            )
    finally:
        for w in workers[1:]:
            w.send_signal(signal.SIGTERM)
        for w in workers[1:]:
            w.wait(timeout=60)
    assert all(w.returncode == 0 for w in workers[1:])
    deliveries = _deliveries(log)
    assert set(deliveries) == ids  # nothing lost
    for mid, runs in deliveries.items():
        assert any(end is not None for _, end in runs), f"{mid} never finished"
        spans = sorted((start, end if end is not None else killed_at) for start, end in runs)
        for (_, first_end), (second_start, _) in itertools.pairwise(spans):
            assert second_start >= first_end - 0.01, f"{mid} was handled twice at once"


@pytest.fixture
def own_server() -> Iterator[Server]:
    """A server of the test's own, which it may restart."""
    if os.environ.get("EPHQ_TEST_DATABASE_URL"):
        pytest.skip("restarts a server of its own; EPHQ_TEST_DATABASE_URL names a shared one")
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries")
    server = Server(bin_dir)
    yield server
    server.destroy()


def test_a_worker_rides_out_dropped_connections_and_a_restart(
    own_server: Server, tmp_path: Path
) -> None:
    url = own_server.url
    with Queue(url=url) as q:
        ids = set(q.enqueue_many("jobs", list(range(40))))
    handler, log = _handler(tmp_path, 0.05)
    worker = subprocess.Popen(
        [EPHQ, "worker", "jobs", "--exec", handler, "--visibility", "5s"],
        env=_env(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _until(lambda: log.exists() and log.read_text().count("end") >= 5, "work to start")
        with psycopg.connect(url, autocommit=True, application_name="test admin") as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'ephq %'"
            )
        _until(lambda: log.read_text().count("end") >= 15, "work to go on after the drop")
        own_server.restart()
        with Queue(url=url) as q:
            _until(
                lambda: (s := q.stats("jobs")).ready + s.inflight + s.delayed == 0,
                "every message to be settled after the restart",
            )
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert set(_deliveries(log)) == ids
    assert "retrying until the store answers" in err and "the store answers again" in err
    notices = [line for line in err.splitlines() if line.startswith("ephq worker: cannot")]
    assert 1 <= len(notices) <= 10, err  # a line per outage, not per retry


def test_a_live_processs_leases_stay_its_own_across_a_restart(own_server: Server) -> None:
    """A restart ends every connection, the ones a live process's leases are believed by too;
    its keeper writes them again on a new one within the grace (holders.RESTART_GRACE_S), so
    another consumer does not get a message the process is still working on (it did at once)."""
    url = own_server.url
    holder = Queue(url=url)  # keeping leases
    holder.enqueue_many("r", ["held", "free"])
    held = holder.dequeue("r", visibility=600)
    assert held is not None and held.data == "held" and held.receipt

    def announced() -> bool:
        try:
            leases = holder.leases("r")
        except Unavailable:  # the first call after the restart finds its connection gone
            return False
        mine = [lease.holder for lease in leases if lease.id == held.id]
        return len(mine) == 1 and mine[0] is not None and mine[0]["pid"] == os.getpid()

    _until(announced, "the lease to be announced")
    own_server.restart()
    other = Queue(url=url, keep_leases=False)
    got = []
    end = time.monotonic() + holders.RESTART_GRACE_S + 5
    while time.monotonic() < end:
        with contextlib.suppress(Unavailable):
            got += [m.data for m in other.dequeue_many("r", 5, visibility=600)]
        time.sleep(0.2)
    assert got == ["free"]
    _until(announced, "the lease to be announced again")
    for _ in range(2):  # the first call after the restart finds its connection gone
        with contextlib.suppress(Unavailable):
            holder.ack("r", held.receipt)
            break
    else:
        raise AssertionError("the holder's ack failed twice")
    holder.close()
    other.close()


def test_an_unreachable_server_fails_at_once_with_its_own_exit_code(tmp_path: Path) -> None:
    with socket_closed() as port:
        url = f"postgresql://ann:hunter2@127.0.0.1:{port}/queue?connect_timeout=5"
        done = _run(url, "stats")
    assert done.returncode == 10, done.stderr
    assert done.stderr.count("\n") == 1 and "is unavailable" in done.stderr
    assert "hunter2" not in done.stderr and "ann@127.0.0.1" in done.stderr


class socket_closed:  # noqa: N801 - used as a function
    """A port of 127.0.0.1 that nothing listens on, for the duration."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *_: object) -> None:
        self.sock.close()


def test_without_the_driver_a_url_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from ephq.cli.main import main\n"
        "sys.exit(main(['--url', 'postgresql://127.0.0.1/x', 'stats']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == (
        "ephq: a postgresql:// URL needs the PostgreSQL driver (psycopg is missing): "
        "pip install 'ephq[postgres]'\n"
    )


def test_the_file_backend_never_imports_the_driver(tmp_path: Path) -> None:
    """Nor what only a worker, metrics or a database need: an enqueue's start-up pays for
    none of it (socket alone is 6 ms)."""
    code = (
        "import sys\n"
        "from ephq.cli.main import main\n"
        f"main(['--home', {str(tmp_path)!r}, 'enqueue', 's', '-'])\n"
        "heavy = ('psycopg', 'socket', 'http', 'tempfile', 'ephq.postgres')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or m.startswith('ephq.postgres')) != [])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input="1",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.stdout.splitlines()[-1] == "False", done.stderr


def test_a_backlog_moves_from_files_to_postgresql_and_back(
    database_server: str, tmp_path: Path
) -> None:
    url = fresh_database(database_server)
    home = tmp_path / "home"
    files = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    files["EPHQ_HOME"] = str(home)

    def on_files(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [EPHQ, *args], input=stdin, capture_output=True, text=True, env=files, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    on_files("config", "s", "--max-attempts", "1")
    on_files("enqueue", "s", "--lines", stdin='{"a":  1}\n"x\u2028y"\n[1.50, 2e3]\n')
    on_files("enqueue", "s", "--delay", "1h", stdin="7")
    receipt = json.loads(on_files("dequeue", "s"))["receipt"]
    on_files("nack", "s", receipt, "--reason", "smtp 451")  # the first: a dead letter now
    exported = on_files("export", "s")
    moved = _run(url, "import", "s", stdin=exported)
    assert (moved.returncode, moved.stdout) == (0, "4\n"), moved.stderr
    again = _run(url, "import", "s", stdin=exported)
    assert again.returncode == 2 and "already in stream 's'" in again.stderr
    stats = json.loads(_run(url, "stats", "s", "--json").stdout)
    assert (stats["ready"], stats["delayed"], stats["dlq"]) == (2, 1, 1)
    back = _run(url, "export", "s").stdout
    strip = [
        {k: v for k, v in json.loads(line).items() if k != "metadata"}
        for line in exported.split("\n")[:-1]
    ]
    assert [
        {k: v for k, v in json.loads(line).items() if k != "metadata"}
        for line in back.split("\n")[:-1]
    ] == strip
    data = [line.split(',"data":', 1)[1] for line in back.split("\n")[:-1]]
    assert data == [line.split(',"data":', 1)[1] for line in exported.split("\n")[:-1]]
    leased = json.loads(_run(url, "dequeue", "s").stdout)
    assert leased["data"] == "x\u2028y"
    dead = json.loads(
        _run(url, "dlq", "show", "s", json.loads(exported.split("\n")[-2])["id"]).stdout
    )
    assert dead["metadata"]["dead"]["error"] == "smtp 451"
    bad = _run(url, "import", "t", stdin='{"id": "x"}\n')
    assert bad.returncode == 2 and bad.stderr.startswith("ephq: stdin, line 1: ")
    assert _run(url, "stats", "t").returncode == 4  # nothing imported, nothing created


def test_a_claim_reads_a_few_pages_however_deep_and_without_statistics(
    database_server: str,
) -> None:
    """The claim walks the primary key and stops at what it takes: on a table with no
    statistics (filled faster than autovacuum looks) it must not read the whole stream, as the
    plan that sorted every visible row did. Measured in pages the server touched, not time."""
    url = fresh_database(database_server)
    with Queue(url=url) as q:
        q.configure("deep")  # the schema, and the stream, with no rows yet
    with psycopg.connect(url, autocommit=True) as conn:
        # Rows as another process adds them, faster than autovacuum looks.
        conn.execute(
            """INSERT INTO ephq.messages (stream, dead, id, visible_at, data)
               SELECT 'deep', false, lpad(to_hex(n), 24, '0'), 0, '"x"'
               FROM generate_series(1, 20000) AS n"""
        )
        conn.execute("SET enable_bitmapscan = off")  # as ephq's connections are
        stats = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'ephq' AND tablename = 'messages'"
        ).fetchone()
        assert stats == (0,), "the table was analyzed: this test needs one without statistics"
        pages = conn.execute(
            "SELECT pg_relation_size('ephq.messages') / current_setting('block_size')::int"
        ).fetchone()
        _claim_buffers(conn, 1)  # the first call also reads the catalogs to plan
        touched = [_claim_buffers(conn, count) for count in (1, 100)]
    assert pages is not None and pages[0] > 100, pages
    # A claim of one touches a handful of index and heap pages, one of 100 about ten a message;
    # a scan of the stream would touch every page of it (over a hundred, here).
    assert touched[0] < 30, touched
    assert touched[1] < 100 * 15, touched


def _claim_buffers(conn: psycopg.Connection[Any], count: int) -> int:
    """Pages the server touched for one claim of count messages (rolled back)."""
    with conn.transaction():
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM "
            "ephq.claim('deep', false, %s, %s, 'abcd1234', NULL, 'now')",
            (time.time_ns(), count),
        ).fetchone()
        assert plan is not None
        node = plan[0][0]["Plan"]
        touched = int(node["Shared Hit Blocks"] + node["Shared Read Blocks"])
        raise psycopg.Rollback()
    return touched


def test_leases_name_a_live_worker_and_forget_a_killed_one(
    database_server: str, tmp_path: Path
) -> None:
    url = fresh_database(database_server)
    assert _run(url, "enqueue", "s", stdin="1").returncode == 0
    handler, _ = _handler(tmp_path, 60)
    worker = subprocess.Popen(
        [EPHQ, "worker", "s", "--exec", handler],
        env=_env(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def lease() -> dict[str, Any]:
        found = json.loads(_run(url, "leases", "s", "--json").stdout or "null")
        return found if isinstance(found, dict) else {}

    try:
        _until(lambda: bool(lease().get("holder")), "the worker to announce its lease")
        holder = lease()["holder"]
        assert holder["pid"] == worker.pid and holder["worker"] == handler
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    _until(lambda: lease().get("holder", 1) is None, "the killed worker's row to say nothing")
    stale = _run(url, "check")
    assert stale.returncode == 8 and "stale-holder" in stale.stdout
    ok = subprocess.run(  # the next worker clears what the killed one left
        [EPHQ, "worker", "s", "--exec", "true", "--drain", "--visibility", "1s"],
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert _run(url, "check").returncode == 0


def test_a_damaged_holder_row_and_a_malformed_url_are_one_line_each(database_server: str) -> None:
    url = fresh_database(database_server)
    with Queue(url=url) as q:
        mid = q.enqueue("s", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(  # a dead holder whose row holds junk where receipts belong
            "INSERT INTO ephq.holders (stream, dead, backend_pid, host, pid, worker, started_at,"
            " leases) VALUES ('s', false, -1, 'h', 1, 'w', 0, '{\"not.a.receipt\": \"x\"}')"
        )
    leased = _run(url, "dequeue", "s")
    assert leased.returncode == 0 and json.loads(leased.stdout)["id"] == mid
    assert _run(url, "leases", "s").returncode == 0
    bad = _run("postgresql://ann:hunter2@db host/x", "stats")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "not a usable database URL" in bad.stderr and "hunter2" not in bad.stderr


def test_a_store_made_by_the_first_schema_is_migrated_with_its_messages(
    database_server: str,
) -> None:
    url = fresh_database(database_server)
    with psycopg.connect(url) as conn, conn.cursor() as cur:  # what ephq 0.2 made
        cur.execute("CREATE SCHEMA ephq")
        cur.execute(schema.CREATE_VERSION_TABLE)
        for statement in schema.MIGRATIONS[0]:
            cur.execute(statement)
        cur.execute("INSERT INTO ephq.schema_version (version) VALUES (1)")
        cur.execute("INSERT INTO ephq.streams (name, max_attempts) VALUES ('s', 3)")
        cur.execute(
            "INSERT INTO ephq.messages (stream, dead, id, visible_at, data) "
            "VALUES ('s', false, '18ecdd0000000000aaaaaaaa', 0, '\"old\"')"
        )
    with Queue(url=url) as q:
        assert q.config("s").max_attempts == 3
        assert q.config("s").dedup_window == 300
        m = q.dequeue("s")
        assert m is not None and m.data == "old"
        assert q.enqueue("s", 1, dedup_key="k") == q.enqueue("s", 2, dedup_key="k")
    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT version FROM ephq.schema_version").fetchone()
    assert version == (schema.VERSION,)


def test_rows_that_are_not_messages_are_set_aside_and_never_read_as_messages(
    database_server: str,
) -> None:
    """Rows written into ephq's tables by hand (or by another tool) whose data is not JSON,
    whose metadata is not an object or whose id is not an id: every command goes on with the
    messages there are, a consumer that leases such a row sets it aside whole, `check` reports
    what is left and `--repair` sets it aside. A group whose head was such a row goes on."""
    url = fresh_database(database_server)
    with Queue(url=url) as q:
        good = q.enqueue("s", "good")
    bad_data, bad_meta, bad_dead, bad_head, waiting = (
        f"000000000000000{n}aaaaaaaa" for n in range(1, 6)
    )
    with psycopg.connect(url, autocommit=True) as conn:
        add = "INSERT INTO ephq.messages (stream, dead, id, visible_at, data, meta) VALUES "
        conn.execute(add + "('s', false, %s, 0, 'hello', '{}')", (bad_data,))
        conn.execute(add + "('s', false, %s, 0, '3', '[1]')", (bad_meta,))
        conn.execute(add + "('s', false, 'zz', 0, '4', '{}')")
        conn.execute(add + "('s', true, %s, 0, '{oops', '{}')", (bad_dead,))
        join = "SELECT ephq.join_group('s', 'g', %s, 0, 0, %s, '{}')"
        conn.execute(join, (bad_head, "not json"))  # the group's head
        conn.execute(join, (waiting, '"next"'))  # waiting behind it

    def ids(out: str) -> list[str]:
        return [json.loads(line)["id"] for line in out.splitlines()]

    peek = _run(url, "peek", "s", "-n", "9")
    assert (peek.returncode, ids(peek.stdout), peek.stderr) == (0, [good], "")
    export = _run(url, "export", "s")
    assert export.returncode == 0 and sorted(ids(export.stdout)) == sorted([good, waiting])
    dead = _run(url, "dlq", "list", "s", "--json")
    assert dead.returncode == 0 and dead.stdout.strip() in ("", "[]"), dead
    show = _run(url, "dlq", "show", "s", bad_dead)
    assert show.returncode == 4 and "check --repair" in show.stderr, show
    assert show.stderr.count("\n") == 1, show.stderr
    assert _run(url, "stats", "s").returncode == 0

    def problems(*args: str) -> tuple[int, list[dict[str, Any]]]:
        done = _run(url, "check", "--json", *args)
        assert "Traceback" not in done.stderr, done
        return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]

    status, found = problems()
    assert status == 8
    assert sorted(p["path"] for p in found if p["kind"] == "unreadable") == sorted(
        [f"ephq.messages row {i!r}" for i in (bad_data, bad_meta, "zz", bad_head)]
        + [f"ephq.messages row {bad_dead!r} (a dead letter)"]
    ), found

    leased = _run(url, "dequeue", "s", "-n", "9")
    assert leased.returncode == 0 and leased.stderr == "", leased
    assert ids(leased.stdout) == [good, waiting]  # the head set aside: its group went on
    with psycopg.connect(url) as conn:
        kept: dict[str, str] = dict(conn.execute("SELECT id, data FROM ephq.quarantine").fetchall())
    assert kept == {bad_data: "hello", bad_meta: "3", "zz": "4", bad_head: "not json"}

    status, repaired = problems("--repair")
    assert status == 0 and [p["kind"] for p in repaired].count("unreadable") == 1, repaired
    status, after = problems()
    assert status == 0 and {p["kind"] for p in after} == {"quarantined"}, after
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM ephq.messages").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM ephq.quarantine").fetchone() == (5,)


def test_settings_set_out_of_bounds_by_hand_are_refused_or_reported(
    database_server: str,
) -> None:
    """A stream's row holding settings `ephq config` refuses: one written before schema 4
    gives the defaults, is reported by check and reset by --repair; since schema 4 such an
    UPDATE fails at once."""
    url = fresh_database(database_server)
    with psycopg.connect(url) as conn, conn.cursor() as cur:  # a store made by schema 3
        cur.execute("CREATE SCHEMA ephq")
        cur.execute(schema.CREATE_VERSION_TABLE)
        for statements in schema.MIGRATIONS[:3]:
            for statement in statements:
                cur.execute(statement)
        cur.execute("INSERT INTO ephq.schema_version (version) VALUES (3)")
        cur.execute(
            "INSERT INTO ephq.streams (name, max_attempts, max_size, dedup_window_ms,"
            " dead_letter_stream) VALUES ('s', 2, -5, -1000, 'no such name!')"
        )
    with Queue(url=url) as q:
        assert q.config("s") == StreamConfig()  # the defaults, not the row's
        q.enqueue("s", "fits the default max_size")
    found = _run(url, "check", "--json")
    problems = [json.loads(line) for line in found.stdout.splitlines()]
    assert found.returncode == 8 and [(p["kind"], p["stream"]) for p in problems] == [
        ("bad-config", "s")
    ], found
    assert _run(url, "check", "--repair").returncode == 0
    assert _run(url, "check").returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT max_attempts, max_size, dedup_window_ms, dead_letter_stream"
            " FROM ephq.streams WHERE name = 's'"
        ).fetchone()
        assert row == (5, 1 << 20, 300_000, None)
        for change in ("max_size = 10", "dedup_window_ms = 0", "dead_letter_stream = 'a b'"):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f"UPDATE ephq.streams SET {change} WHERE name = 's'")


def test_a_stream_no_command_can_name_is_reported_and_its_rows_set_aside(
    database_server: str,
) -> None:
    """Rows written by hand under a stream name ephq refuses: nothing could ever receive those
    messages or use those settings. check says so; --repair sets the messages aside (the
    quarantine keeps them) and deletes the stream's row."""
    url = fresh_database(database_server)
    with Queue(url=url) as q:
        q.enqueue("s", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO ephq.streams (name) VALUES ('no such name!')")
        conn.execute(
            "INSERT INTO ephq.messages (stream, dead, id, visible_at, data)"
            " VALUES ('no such name!', false, '18ecdd0000000000aaaaaaaa', 0, '2')"
        )
    found = _run(url, "check", "--json")
    kinds = sorted((p["kind"], p["path"]) for p in map(json.loads, found.stdout.splitlines()))
    assert found.returncode == 8 and kinds == [
        ("foreign", "ephq.streams row 'no such name!'"),
        ("unreadable", "ephq.messages row '18ecdd0000000000aaaaaaaa'"),
    ], found
    assert _run(url, "check", "--repair").returncode == 0
    after = _run(url, "check", "--json")
    assert after.returncode == 0
    assert [json.loads(line)["kind"] for line in after.stdout.splitlines()] == ["quarantined"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM ephq.streams").fetchall() == [("s",)]
        kept = conn.execute("SELECT stream, data FROM ephq.quarantine").fetchall()
        assert kept == [("no such name!", "2")]
