"""What an operator uses: leases, metrics, receipts from stdin, JSON Lines exactly, --json
everywhere, streams that are not there, and a drain that waits for retries. Real processes, the
installed executable, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from ephq import Queue, metrics
from tests.conftest import snapshot
from tests.test_cli import EPHQ, ephq, lease, ok
from tests.test_worker import finish, script, start_worker


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body: str = answer.read().decode()
        return body


def _samples(text: str) -> dict[str, float]:
    """Every sample line of a Prometheus text page: 'name{labels}' -> value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


# -- receipts from stdin -------------------------------------------------------------------


def test_ack_reads_receipts_or_dequeues_output_from_stdin(home: Path) -> None:
    ok(home, "enqueue", "s", "--lines", stdin="1\n2\n3\n4\n")
    leased = ok(home, "dequeue", "s", "--max", "2")
    ok(home, "ack", "s", "-", stdin=leased)  # dequeue's JSON lines, as they come
    receipts = [json.loads(line)["receipt"] for line in ok(home, "dequeue", "s", "-n", "2").split()]
    ok(home, "release", "s", "-", stdin="\n".join(receipts) + "\n\n")
    again = ok(home, "dequeue", "s", "-n", "2")
    before = snapshot(home)
    bad = ephq(home, "ack", "s", "-", stdin=again + "not a receipt\n")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert (
        bad.stderr == "ephq: 'not a receipt' is not an ephq receipt (it comes from dequeue, "
        "as 'receipt')\n"
    )
    assert snapshot(home) == before  # checked all before acking any
    both = ephq(home, "ack", "s", "-", receipts[0])
    assert both.returncode == 2 and "not both" in both.stderr
    ok(home, "nack", "s", "-", "--delay", "1h", stdin=again)
    assert json.loads(ok(home, "stats", "s", "--json"))["delayed"] == 2


# -- JSON Lines, exactly -------------------------------------------------------------------

LINES = [
    '{"a": "line\u2028separator and \u2029 paragraph"}',
    '"next\u0085line, a raw one"',
    "1e400",
    "-0",
    '{"deep": [1, {"x": null}, true, false, "\\u00e9\\ud83d\\ude00"]}',
    "  [ 1 , 2 ]",
    '"tab\\tand quote\\""',
]


def test_every_json_value_round_trips_through_lines_byte_for_byte(home: Path) -> None:
    text = "\r\n".join(LINES[:3]) + "\n\n" + "\n".join(LINES[3:])  # no final newline
    ids = ok(home, "enqueue", "s", "--lines", stdin=text).split()
    assert len(ids) == len(LINES)
    out = subprocess.run(
        [EPHQ, "dequeue", "s", "--max", "20"],
        capture_output=True,
        env={**os.environ, "EPHQ_HOME": str(home)},
        check=True,
    ).stdout.decode()
    # Lines end at "\n" only, as for the input: splitlines() would also split at U+2028.
    got = [line.split(',"data":', 1)[1][:-1] for line in out.split("\n")[:-1]]
    assert got == [line.strip(" ") for line in LINES]


# -- streams that are not there ------------------------------------------------------------


def test_a_missing_stream_is_not_found_and_waiting_does_not_create_it(home: Path) -> None:
    ok(home, "enqueue", "real", stdin="1")
    waited = ephq(home, "dequeue", "typo", "--wait", "200ms")
    assert (waited.returncode, waited.stdout, waited.stderr) == (1, "", "")
    for command in (["stats", "typo"], ["leases", "typo"], ["dlq", "list", "typo"]):
        missing = ephq(home, *command)
        assert missing.returncode == 4, command
        assert missing.stderr == f"ephq: no stream 'typo' in {home} (streams: real)\n"
    assert not (home / "typo").exists()
    assert [json.loads(line)["stream"] for line in ok(home, "stats", "--json").split()] == ["real"]


def test_a_consumer_waiting_before_the_stream_exists_gets_its_first_message(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    waiting = subprocess.Popen(
        [EPHQ, "dequeue", "later", "--wait", "30s"],
        env={**env, "EPHQ_HOME": str(home)},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    mid = ok(home, "enqueue", "later", stdin='"hello"').strip()
    out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and json.loads(out)["id"] == mid


# -- data out ------------------------------------------------------------------------------


def test_json_output_of_config_check_purge_and_stats_watch(home: Path) -> None:
    ok(home, "enqueue", "s", "--lines", stdin="1\n2\n")
    assert json.loads(ok(home, "config", "s", "--json"))["max_attempts"] == 5
    assert json.loads(ok(home, "purge", "s", "--yes", "--json")) == {"stream": "s", "purged": 2}
    (home / "s" / "ready" / "stray.txt").write_text("not ours")
    found = ephq(home, "check", "--json")
    assert found.returncode == 8
    problem = json.loads(found.stdout)
    assert problem["kind"] == "foreign" and problem["repaired"] is False
    assert problem["path"].endswith("stray.txt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    watch = subprocess.Popen(
        [EPHQ, "stats", "s", "--watch", "--json", "--interval", "100ms"],
        env={**env, "EPHQ_HOME": str(home)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        rounds = [json.loads(watch.stdout.readline()) for _ in range(3)]
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
    assert [r["stream"] for r in rounds] == ["s"] * 3 and all("time" in r for r in rounds)
    assert watch.returncode == 0


# -- what runs now -------------------------------------------------------------------------


def test_leases_name_the_worker_that_holds_them(home: Path, tmp_path: Path) -> None:
    ok(home, "enqueue", "s", "--lines", stdin="1\n2\n3\n")
    by_hand = lease(home, "s", "--visibility", "10m")
    handler = script(tmp_path, "exec sleep 60\n")
    worker = start_worker(home, "s", "--exec", handler, "--concurrency", "2", "--grace", "0")
    try:

        def held() -> list[dict[str, object]]:
            lines = ok(home, "leases", "s", "--json").splitlines()
            return [json.loads(line) for line in lines]

        _until(lambda: sum(1 for x in held() if x["holder"]) == 2, "the worker's two leases")
        leases = held()
        assert len(leases) == 3
        mine = next(x for x in leases if x["id"] == by_hand["id"])
        assert mine["holder"] is None and mine["deadline"] == by_hand["visible_until"]
        theirs = [x for x in leases if x["holder"]]
        for x in theirs:
            holder = x["holder"]
            assert isinstance(holder, dict)
            assert holder["pid"] == worker.pid and holder["worker"] == handler
            assert holder["host"] == socket.gethostname() and x["attempts"] == 1
        table = ok(home, "leases", "s").splitlines()
        assert table[0].split() == ["id", "attempt", "leased_at", "deadline", "holder"]
        assert sum(f"pid {worker.pid}: {handler}" in row for row in table) == 2
    finally:
        worker.send_signal(signal.SIGTERM)
        finish(worker)
    assert list((home / "s" / "holders").iterdir()) == []  # it said goodbye
    assert all(
        x["holder"] is None for x in map(json.loads, ok(home, "leases", "s", "--json").split())
    )


def test_a_killed_workers_holder_file_says_nothing_and_check_removes_it(
    home: Path, tmp_path: Path
) -> None:
    ok(home, "enqueue", "s", stdin="1")
    worker = start_worker(home, "s", "--exec", script(tmp_path, "exec sleep 60\n"))
    try:
        _until(lambda: '"pid"' in ok(home, "leases", "s", "--json"), "the worker's lease")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    assert json.loads(ok(home, "leases", "s", "--json"))["holder"] is None
    (holder,) = (home / "s" / "holders").iterdir()
    os.utime(holder, (0, 0))  # ctime cannot be set back: check also needs a grace that passed
    q = Queue(home)
    deadline = time.monotonic() + 15
    while not [p for p in q.check() if p.kind == "stale-holder"]:
        assert time.monotonic() < deadline, "check never reported the dead worker's file"
        time.sleep(0.5)
    q.check(repair=True)
    assert not holder.exists()


# -- metrics -------------------------------------------------------------------------------


def _fill(home: Path) -> None:
    ok(home, "config", "s", "--max-attempts", "1")
    ok(home, "enqueue", "s", "--lines", stdin="1\n2\n3\n")
    ok(home, "enqueue", "s", "--delay", "1h", stdin="4")
    ok(home, "nack", "s", lease(home)["receipt"])  # dead
    lease(home)  # in flight


def test_metrics_print_write_a_textfile_and_serve(home: Path, tmp_path: Path) -> None:
    _fill(home)
    printed = ok(home, "metrics")
    samples = _samples(printed)
    for state, count in (("ready", 1), ("delayed", 1), ("inflight", 1), ("dead", 1)):
        assert samples[f'ephq_messages{{stream="s",state="{state}"}}'] == count
    assert samples['ephq_oldest_message_age_seconds{stream="s"}'] >= 0
    assert "# TYPE ephq_messages gauge" in printed
    target = tmp_path / "ephq.prom"
    ok(home, "metrics", "--textfile", str(target))
    assert _samples(target.read_text()) == {**samples, **_samples(target.read_text())}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    missing = ephq(home, "metrics", "--textfile", str(tmp_path / "nowhere" / "x.prom"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    server = subprocess.Popen(
        [EPHQ, "metrics", "--listen", f"127.0.0.1:{port}"],
        env={**env, "EPHQ_HOME": str(home)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        assert f"127.0.0.1:{port}/metrics" in server.stderr.readline()
        ok(home, "enqueue", "s", stdin="5")
        served = _samples(_scrape(port))  # read at the scrape: the new message counts
        assert served['ephq_messages{stream="s",state="ready"}'] == 2
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy = ephq(home, "metrics", "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    assert busy.returncode == 2 and busy.stderr.startswith("ephq: cannot listen on 127.0.0.1:")
    bad = ephq(home, "metrics", "--listen", "nonsense")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_a_scraper_that_hangs_up_is_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """A scraper that resets its connection mid-answer (its timeout, a restart) leaves nothing
    on stderr, and the server goes on answering."""
    server = metrics.serve(("127.0.0.1", 0), lambda: "x 1\n" * 200_000)  # bigger than buffers
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for _ in range(3):
            rude = socket.create_connection(("127.0.0.1", port))
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rude.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            rude.recv(1)  # the answer has begun
            rude.close()  # RST: the rest of the answer has nowhere to go
        assert _scrape(port).startswith("x 1\n")
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == ""


def test_worker_serves_its_counters_and_handler_durations(home: Path, tmp_path: Path) -> None:
    ok(home, "config", "s", "--max-attempts", "1")
    ok(home, "enqueue", "s", "--lines", stdin='"ok"\n"ok"\n"fail"\n"later"\n')
    handler = script(
        tmp_path,
        'read m\ncase "$m" in *ok*) exit 0;; *fail*) exit 1;; *) exec sleep 60;; esac\n',
    )
    port = _free_port()
    worker = start_worker(
        home, "s", "--exec", handler, "--metrics-listen", f"127.0.0.1:{port}", "--grace", "0"
    )
    try:

        def scraped() -> dict[str, float]:
            try:
                return _samples(_scrape(port))
            except OSError:
                return {}

        settled = 'ephq_worker_messages_total{stream="s",outcome="acked"}'
        dead_key = 'ephq_worker_messages_total{stream="s",outcome="dead_lettered"}'
        _until(lambda: scraped().get(settled) == 2, "two acks counted")
        # The third ("fail") may still be running when the acks are counted: wait for its
        # outcome, then for the fourth, which sleeps, to be the one running.
        _until(lambda: scraped().get(dead_key) == 1, "the failure counted")
        _until(lambda: scraped().get('ephq_worker_handlers_running{stream="s"}') == 1, "running")
        samples = scraped()
        assert samples[dead_key] == 1
        count = 'ephq_worker_handler_duration_seconds_count{stream="s",outcome="acked"}'
        assert samples[count] == 2
        inf = 'ephq_worker_handler_duration_seconds_bucket{stream="s",outcome="acked",le="+Inf"}'
        assert samples[inf] == 2
        buckets = [
            v
            for k, v in samples.items()
            if k.startswith(
                'ephq_worker_handler_duration_seconds_bucket{stream="s",outcome="acked"'
            )
        ]
        assert buckets == sorted(buckets)  # cumulative
        assert samples['ephq_messages{stream="s",state="inflight"}'] == 1
        assert samples['ephq_worker_concurrency{stream="s"}'] == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        finish(worker)


# -- a drain that includes retries ----------------------------------------------------------


def test_drain_can_wait_for_retries_due_soon(home: Path, tmp_path: Path) -> None:
    flaky = script(
        tmp_path,
        f"if [ -e {tmp_path}/tried-$EPHQ_MESSAGE_ID ]; then exit 0; fi\n"
        f"touch {tmp_path}/tried-$EPHQ_MESSAGE_ID; exit 1\n",
    )
    ok(home, "enqueue", "s", "--lines", stdin="1\n2\n")
    # Retries a minute away: even a slow machine's drain ends before they come due.
    code, err = finish(start_worker(home, "s", "--exec", flaky, "--drain", "--retry-delay", "1m"))
    assert code == 0, err
    assert json.loads(ok(home, "stats", "s", "--json"))["delayed"] == 2  # left for later
    for name in os.listdir(tmp_path):
        if name.startswith("tried-"):
            os.unlink(tmp_path / name)
    ok(home, "purge", "s", "--yes")
    ok(home, "enqueue", "s", "--lines", stdin="1\n2\n")
    code, err = finish(
        start_worker(
            home, "s", "--exec", flaky, "--drain", "--wait-retries", "1m", "--retry-delay", "0.3"
        )
    )
    assert code == 0, err
    stats = json.loads(ok(home, "stats", "s", "--json"))
    assert (stats["ready"], stats["delayed"], stats["dlq"]) == (0, 0, 0)
    assert "acked 2, retried 2" in err
    alone = ephq(home, "worker", "s", "--exec", "true", "--wait-retries", "1m")
    assert alone.returncode == 2 and "--drain" in alone.stderr


# -- completion ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("ephq stats ", ["alpha", "beta"]),
        ("ephq dequeue al", ["alpha"]),
        ("ephq dlq redrive alpha ", "the dead letter"),
    ],
)
def test_shell_completion_offers_streams_and_dead_letters(
    home: Path, words: str, expected: list[str] | str
) -> None:
    ok(home, "config", "alpha", "--max-attempts", "1")
    dead = ok(home, "enqueue", "alpha", stdin="1").strip()
    ok(home, "nack", "alpha", lease(home, "alpha")["receipt"])
    ok(home, "enqueue", "beta", stdin="1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    env |= {
        "EPHQ_HOME": str(home),
        "_EPHQ_COMPLETE": "complete_bash",  # what the script --install-completion writes runs
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    done = subprocess.run([EPHQ], env=env, capture_output=True, text=True, check=False)
    offered = done.stdout.split()
    assert offered == ([dead] if expected == "the dead letter" else expected), done.stderr


def test_lease_free_commands_keep_the_one_line_error_contract(home: Path) -> None:
    for args in (["leases"], ["metrics", "--textfile"], ["stats", "s", "--interval", "x"]):
        out = ephq(home, *args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (args, out.stderr)
        assert re.match(r"ephq( \w+)?: ", out.stderr), out.stderr


def test_the_workers_status_line_says_what_runs_and_that_it_is_stopping(
    home: Path, tmp_path: Path
) -> None:
    ok(home, "enqueue", "s", stdin="1")
    controller, terminal = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    handler = script(tmp_path, "exec sleep 60\n")
    worker = subprocess.Popen(
        [EPHQ, "worker", "s", "--exec", handler, "--grace", "20s"],
        env={**env, "EPHQ_HOME": str(home), "TERM": "xterm", "COLUMNS": "200"},
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""

    def shows(text: str) -> Callable[[], bool]:
        def look() -> bool:
            nonlocal seen
            import select

            while select.select([controller], [], [], 0.05)[0]:
                try:
                    seen += os.read(controller, 65536)
                except OSError:
                    break
            return text.encode() in seen

        return look

    try:
        _until(shows("s: 1 running"), "the status line to count the running handler")
        worker.send_signal(signal.SIGINT)
        _until(shows("stopping: 1 handler(s) finishing, up to 20s"), "the stopping status")
    finally:
        worker.send_signal(signal.SIGINT)  # the second: stop now
        worker.wait(timeout=30)
        os.close(controller)
    assert worker.returncode == 130
