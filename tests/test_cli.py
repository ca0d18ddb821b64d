"""The `ephq` command through the real installed executable, in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import snapshot, store_environment

EPHQ = str(Path(sys.executable).parent / "ephq")


def ephq(
    home: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    environ.update(store_environment(home), **env)
    return subprocess.run(
        [EPHQ, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def ok(home: Path, *args: str, stdin: str | None = None) -> str:
    result = ephq(home, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def lease(home: Path, stream: str = "s", *args: str) -> dict[str, Any]:
    line = ok(home, "dequeue", stream, *args)
    record = json.loads(line)
    assert isinstance(record, dict)
    return record


@pytest.mark.both_backends
def test_enqueue_from_file_stdin_and_dash(store: str, home: Path, tmp_path: Path) -> None:
    msg = tmp_path / "msg.json"
    msg.write_text('{"to": "a@example.com",\n "n": 1.50}\n')
    ids = [
        ok(home, "enqueue", "email", str(msg)).strip(),
        ok(home, "enqueue", "email", stdin='"from stdin"').strip(),
        ok(home, "enqueue", "email", "-", stdin="[1, 2]").strip(),
    ]
    assert all(len(i) == 24 for i in ids)
    first = lease(home, "email")
    assert set(first) >= {"id", "receipt", "stream", "attempts", "enqueued_at", "data"}
    assert (first["id"], first["stream"], first["attempts"]) == (ids[0], "email", 1)
    assert first["data"] == {"to": "a@example.com", "n": 1.5}
    assert first["enqueued_at"].endswith("Z")
    raw = ok(home, "dequeue", "email")
    assert raw.count("\n") == 1 and raw.endswith('"data":"from stdin"}\n')
    assert lease(home, "email")["data"] == [1, 2]


@pytest.mark.both_backends
def test_data_is_printed_as_enqueued(store: str, home: Path) -> None:
    ok(home, "enqueue", "s", stdin='{"b": 1.0, "a": 100000000000000000000001}')
    out = ok(home, "dequeue", "s")
    assert out.endswith(',"data":{"b": 1.0, "a": 100000000000000000000001}}\n')


@pytest.mark.both_backends
def test_lines_enqueues_all_and_prints_every_id(store: str, home: Path) -> None:
    out = ok(home, "enqueue", "s", "--lines", stdin='{"n": 1}\n\n{"n": 2}\n  \n{"n": 3}\n')
    ids = out.split()
    assert len(ids) == 3
    got = [json.loads(line) for line in ok(home, "dequeue", "s", "--max", "5").splitlines()]
    assert [m["id"] for m in got] == ids
    assert [m["data"]["n"] for m in got] == [1, 2, 3]


@pytest.mark.both_backends
def test_dequeue_nothing_is_exit_1_with_empty_stdout(store: str, home: Path) -> None:
    for args in (["dequeue", "s"], ["dequeue", "s", "--wait", "200ms"], ["peek", "s"]):
        result = ephq(home, *args)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


@pytest.mark.both_backends
def test_ack_nack_extend_release(store: str, home: Path) -> None:
    ok(home, "enqueue", "s", stdin="1")
    ok(home, "enqueue", "s", stdin="2")
    a, b = (json.loads(x) for x in ok(home, "dequeue", "s", "-n", "2", "-v", "1m").splitlines())
    until = ok(home, "extend", "s", a["receipt"], "10m").strip()
    assert until.endswith("Z") and until > a["visible_until"]
    ok(home, "ack", "s", a["receipt"], b["receipt"])
    again = ephq(home, "ack", "s", a["receipt"])
    assert again.returncode == 3
    assert again.stderr.startswith(f"ephq: the lease on message {a['id']} (delivery 1) has ended")
    assert again.stderr.count("\n") == 1
    ok(home, "enqueue", "s", stdin="3")
    c = lease(home)
    ok(home, "nack", "s", c["receipt"], "--delay", "0")
    c2 = lease(home)
    assert (c2["id"], c2["attempts"]) == (c["id"], 2)
    ok(home, "release", "s", c2["receipt"])
    assert lease(home)["attempts"] == 2


@pytest.mark.both_backends
def test_ack_reports_each_lost_receipt_and_acks_the_rest(store: str, home: Path) -> None:
    ok(home, "enqueue", "s", stdin="1")
    ok(home, "enqueue", "s", stdin="2")
    a = lease(home)
    ok(home, "ack", "s", a["receipt"])
    b = lease(home)
    result = ephq(home, "ack", "s", a["receipt"], b["receipt"])
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert ephq(home, "peek", "s").returncode == 1


@pytest.mark.both_backends
def test_dead_letters_from_the_shell(store: str, home: Path) -> None:
    ok(home, "config", "jobs", "--max-attempts", "1")
    mid = ok(home, "enqueue", "jobs", stdin='{"job": 7}').strip()
    m = lease(home, "jobs")
    ok(home, "nack", "jobs", m["receipt"], "--reason", "remote said no")
    listing = ok(home, "dlq", "list", "jobs")
    header, row = listing.splitlines()
    assert header.split() == ["id", "attempts", "state", "died_at", "error"]
    assert row.startswith(mid) and row.endswith("remote said no")
    as_json = json.loads(ok(home, "dlq", "list", "jobs", "--json"))
    assert as_json["metadata"]["dead"]["error"] == "remote said no"
    shown = json.loads(ok(home, "dlq", "show", "jobs", mid))
    assert shown["data"] == {"job": 7} and shown["metadata"]["dead"]["attempts"] == 1
    dead = lease(home, "jobs", "--dlq")
    ok(home, "nack", "jobs", dead["receipt"])  # the receipt knows it is a dead letter's
    assert ok(home, "dlq", "redrive", "jobs").split() == [mid]
    assert lease(home, "jobs")["id"] == mid
    missing = ephq(home, "dlq", "show", "jobs", mid)
    assert missing.returncode == 4
    assert (
        missing.stderr
        == f"ephq: no dead letter with id {mid} in the dead letters of stream 'jobs'\n"
    )


@pytest.mark.both_backends
def test_every_dlq_command_sees_a_dead_letter_in_every_state(store: str, home: Path) -> None:
    """Leased by a dead-letter consumer, waiting for its retry, or ready: listed, shown,
    redriven and purged alike, with the attempts it was delivered."""
    ok(home, "config", "s", "--max-attempts", "2")
    ids = ok(home, "enqueue", "s", "--lines", stdin="1\n2\n3\n").split()
    for _ in range(2):
        for _ in ids:
            ok(home, "nack", "s", lease(home)["receipt"], "--reason", "smtp 451")
    held = lease(home, "s", "--dlq")  # ids[0]: leased
    waiting = lease(home, "s", "--dlq")  # ids[1]: a handler failed, retried in an hour
    ok(home, "nack", "s", waiting["receipt"], "--delay", "1h", "--reason", "archive down")
    assert held["attempts"] == 3  # two in the stream, the third to the dead-letter consumer
    listed = [json.loads(line) for line in ok(home, "dlq", "list", "s", "--json").splitlines()]
    assert [m["id"] for m in listed] == ids
    assert [m["state"] for m in listed] == ["inflight", "delayed", "ready"]
    assert [m["attempts"] for m in listed] == [3, 3, 2]
    assert all(m["metadata"]["dead"]["attempts"] == 2 for m in listed)
    assert listed[1]["metadata"]["dead"]["dlq_error"] == "archive down"
    assert listed[1]["metadata"]["dead"]["error"] == "smtp 451"
    table = ok(home, "dlq", "list", "s").splitlines()
    assert "archive down" in table[2] and table[1].split()[2] == "inflight"
    assert json.loads(ok(home, "dlq", "show", "s", ids[1]))["state"] == "delayed"
    assert ok(home, "stats", "s", "--json").count('"dlq":3') == 1
    assert ok(home, "dlq", "redrive", "s", ids[0], ids[1]).split() == ids[:2]
    assert ephq(home, "ack", "s", held["receipt"]).returncode == 3  # the holder was fenced
    back = lease(home, "s")
    assert (back["id"], back["attempts"]) == (ids[0], 1)
    assert "metadata" not in back  # no longer dead: its death is not shown as a fact
    again = lease(home, "s", "--dlq")  # leased: purge --yes takes it too
    assert again["id"] == ids[2]
    purged = [json.loads(line) for line in ok(home, "dlq", "purge", "s", "--yes", "--json").split()]
    assert purged == [{"stream": "s", "id": ids[2]}]
    assert ephq(home, "ack", "s", again["receipt"]).returncode == 3
    assert json.loads(ok(home, "stats", "s", "--json"))["dlq"] == 0


@pytest.mark.both_backends
def test_a_failing_dead_letter_handler_is_recorded(store: str, home: Path, tmp_path: Path) -> None:
    ok(home, "config", "s", "--max-attempts", "1")
    mid = ok(home, "enqueue", "s", stdin="1").strip()
    ok(home, "nack", "s", lease(home)["receipt"], "--reason", "first")
    handler = tmp_path / "archive.sh"
    handler.write_text("#!/bin/sh\necho 'archive is down' >&2\nexit 3\n")
    handler.chmod(0o755)
    done = ephq(home, "worker", "s", "--dlq", "--exec", str(handler), "--max-messages", "1")
    assert done.returncode == 0, done.stderr
    dead = json.loads(ok(home, "dlq", "show", "s", mid))["metadata"]["dead"]
    assert dead["error"] == "first" and "archive is down" in dead["dlq_error"]
    assert dead["attempts"] == 1 and "dlq_failed_at" in dead


@pytest.mark.both_backends
def test_dlq_purge_by_id_and_all(store: str, home: Path) -> None:
    ok(home, "config", "s", "--max-attempts", "1")
    ids = ok(home, "enqueue", "s", "--lines", stdin="1\n2\n3\n").split()
    for _ in ids:
        ok(home, "nack", "s", lease(home)["receipt"])
    assert ok(home, "dlq", "purge", "s", ids[0]).split() == [ids[0]]
    refused = ephq(home, "dlq", "purge", "s")  # all of them takes a yes, as purge does
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "ephq: dlq purge without ids deletes every dead letter of 's': add --yes to do it\n"
    )
    assert ok(home, "dlq", "purge", "s", "--yes").split() == ids[1:]
    assert ok(home, "dlq", "list", "s").splitlines()[1:] == []


@pytest.mark.both_backends
def test_stats_plain_and_json(store: str, home: Path) -> None:
    ok(home, "enqueue", "a", stdin="1")
    ok(home, "enqueue", "a", "--delay", "1h", stdin="2")
    ok(home, "enqueue", "b", stdin="3")
    lease(home, "b")
    plain = ok(home, "stats").splitlines()
    assert plain[0].split() == ["stream", "ready", "delayed", "inflight", "dlq", "oldest"]
    assert plain[1].split()[:5] == ["a", "1", "1", "0", "0"]
    assert plain[2].split() == ["b", "0", "0", "1", "0", "-"]
    assert "\x1b[" not in "".join(plain)
    records = [json.loads(x) for x in ok(home, "stats", "--json").splitlines()]
    assert [r["stream"] for r in records] == ["a", "b"]
    assert records[1] == {
        "stream": "b",
        "ready": 0,
        "delayed": 0,
        "inflight": 1,
        "dlq": 0,
        "oldest_age": None,
    }
    one = json.loads(ok(home, "stats", "a", "--json"))
    assert one["ready"] == 1 and one["oldest_age"] >= 0


@pytest.mark.both_backends
def test_config_show_and_set(store: str, home: Path) -> None:
    shown = json.loads(ok(home, "config", "s"))
    assert shown == {
        "stream": "s",
        "max_attempts": 5,
        "visibility": 30.0,
        "max_size": 1 << 20,
        "dedup_window": 300.0,
        "dead_letter_stream": None,
    }
    changed = json.loads(
        ok(home, "config", "s", "--max-attempts", "3", "--visibility", "2m", "--max-size", "2KiB")
    )
    assert changed == shown | {"max_attempts": 3, "visibility": 120.0, "max_size": 2048}
    assert json.loads(ok(home, "config", "s", "--json")) == changed


def test_a_message_over_the_streams_max_size_is_refused_before_it_is_read_whole(
    home: Path,
) -> None:
    ok(home, "config", "s", "--max-size", "1KiB")
    before = snapshot(home)
    big = '"' + "x" * 2000 + '"'
    refused = ephq(home, "enqueue", "s", stdin=big)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "ephq: stdin: the message is over 1,024 bytes, the most stream 's' takes "
        "(ephq config s --max-size)\n"
    )
    lines = ephq(home, "enqueue", "s", "--lines", stdin=f"1\n{big}\n")
    assert lines.returncode == 2 and "message 2 is 2,002 bytes" in lines.stderr
    assert snapshot(home) == before  # nothing written, the batch neither
    assert ok(home, "enqueue", "s", stdin='"' + "x" * 1000 + '"').strip()
    for bad in ("1", "65MiB", "lots", "-5"):
        out = ephq(home, "config", "s", "--max-size", bad)
        assert out.returncode == 2 and out.stderr.startswith("ephq: "), out.stderr
    # The default is 1 MiB: a 2 MiB message to a fresh stream is refused.
    assert ephq(home, "enqueue", "fresh", stdin='"' + "x" * (2 << 20) + '"').returncode == 2


def test_purge_needs_yes(home: Path) -> None:
    ok(home, "enqueue", "s", stdin="1")
    before = snapshot(home)
    refused = ephq(home, "purge", "s")
    assert refused.returncode == 2
    assert refused.stderr == "ephq: purge deletes every message of 's': add --yes to do it\n"
    assert snapshot(home) == before
    assert ok(home, "purge", "s", "--yes") == "1\n"


def test_check_exit_status(home: Path) -> None:
    ok(home, "enqueue", "s", stdin="1")
    assert ok(home, "check") == ""
    (ready,) = [p for p in (home / "s" / "ready").rglob("*") if p.is_file()]
    ready.write_text("garbage")
    found = ephq(home, "check")
    assert found.returncode == 8
    assert found.stdout.startswith("s: unreadable: ")
    repaired = ephq(home, "check", "--repair")
    assert repaired.returncode == 0 and repaired.stdout.rstrip().endswith("(repaired)")
    (kept,) = (home / "s" / "quarantine").iterdir()
    assert kept.read_text() == "garbage"
    listed = ok(home, "check")  # the quarantine is listed, and is no problem
    assert listed.startswith(f"s: quarantined: {kept}: set aside from ready/")


def test_global_home_option_wins_over_environment(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ok(home, "--home", str(other), "enqueue", "s", stdin="1")
    assert (other / "s").is_dir() and not (home / "s").exists()


BAD: list[tuple[list[str], str | None, str, int]] = [
    (
        ["enqueue", "s", "MSG"],
        None,
        "ephq: {msg}, line 1, column 6: invalid JSON: Expecting ':' delimiter",
        2,
    ),
    (
        ["enqueue", "s"],
        "[1,\n 2,,]",
        "ephq: stdin, line 2, column 4: invalid JSON: Expecting value",
        2,
    ),
    (
        ["enqueue", "s", "--lines"],
        '{"a": 1}\n\n{"b": }\n',
        "ephq: stdin, line 3, column 7: invalid JSON: Expecting value",
        2,
    ),
    (["enqueue", "s"], "", "ephq: message is empty: expected a JSON document", 2),
    (["enqueue", "s", "--lines"], "\n\n", "ephq: stdin: no messages: every line is empty", 2),
    (["enqueue", "s"], "[NaN]", "ephq: stdin: invalid JSON: NaN is not valid JSON", 2),
    (  # deeper than Python's parser goes: a line, not a RecursionError's traceback
        ["enqueue", "s"],
        "[" * 5000 + "]" * 5000,
        "ephq: message data nests deeper than 128 levels of arrays and objects",
        2,
    ),
    (
        ["enqueue", "s", "--lines"],
        "1\n" + "[" * 129 + "]" * 129,
        "ephq: stdin, line 2: message data nests deeper than 128 levels of arrays and objects",
        2,
    ),
    (
        ["import", "s"],
        '{"id":"18aaaaaaaaaaaaaa00000001","state":"ready","attempts":0,"data":1}\n' * 2,
        "ephq: stdin, line 2: message 18aaaaaaaaaaaaaa00000001 is already on line 1",
        2,
    ),
    (
        ["import", "s"],
        '{"id":"18aaaaaaaaaaaaaa00000000","state":"ready","attempts":0,"data":'
        + "[" * 5000
        + "]" * 5000
        + "}",
        "ephq: stdin, line 1: message data nests deeper than 128 levels of arrays and objects",
        2,
    ),
    (["enqueue", "s", "/no/such/file"], None, "ephq: /no/such/file: no such file", 2),
    (
        ["enqueue", "bad/name"],
        "1",
        "ephq: invalid stream name 'bad/name': use 1 to 128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
        2,
    ),
    (
        ["enqueue", "s", "--delay", "5x"],
        "1",
        "ephq: --delay '5x' is not a duration: use a number of seconds or a unit, "
        "as in 250ms, 30s, 5m, 1h, 1d",
        2,
    ),
    (
        ["dequeue", "s", "--max", "0"],
        None,
        "ephq dequeue: Invalid value for '--max' / '-n': 0 is not in the range x>=1. "
        "(see 'ephq dequeue --help')",
        2,
    ),
    (
        ["dequeue", "s", "--visibility", "0"],
        None,
        "ephq: visibility must be more than zero, not 0.0",
        2,
    ),
    (
        ["ack", "s", "RECEIPT", "nonsense"],
        None,
        "ephq: 'nonsense' is not an ephq receipt (it comes from dequeue, as 'receipt')",
        2,
    ),
    (["enqueue"], None, "ephq enqueue: Missing argument 'STREAM'. (see 'ephq enqueue --help')", 2),
    (["frobnicate"], None, "ephq: No such command 'frobnicate'. (see 'ephq --help')", 2),
    (
        ["dequeue", "s", "--colour"],
        None,
        "ephq dequeue: No such option: --colour (see 'ephq dequeue --help')",
        2,
    ),
    (
        ["dlq", "show", "s", "xyz"],
        None,
        "ephq: 'xyz' is not a message id (24 hex digits, as enqueue prints)",
        2,
    ),
    (
        ["worker", "s", "--exec", " ", "--drain"],
        None,
        "ephq worker: Invalid value for --exec: the command is empty: every message would be "
        "acked without anything run (see 'ephq worker --help')",
        2,
    ),
    (
        ["config", "s", "--visibility", "-1"],
        None,
        "ephq: --visibility '-1' is not a duration: use a number of seconds or a unit, "
        "as in 250ms, 30s, 5m, 1h, 1d",
        2,
    ),
    # Input without line ends is refused once a line passes what a message may be: it was
    # read whole (/dev/zero took every gigabyte until the kernel killed ephq).
    (
        ["enqueue", "s", "--lines", "/dev/zero"],
        None,
        "ephq: /dev/zero, line 1: over 1,052,672 bytes, more than a message of stream 's' may hold",
        2,
    ),
    (
        ["import", "s", "/dev/zero"],
        None,
        "ephq: /dev/zero, line 1: over 68,157,440 bytes, more than an exported message",
        2,
    ),
    (
        ["enqueue", "s", "--lines"],
        "1\n" * 1_000_001,
        "ephq: stdin: over 1,000,000 lines or 1,073,741,824 bytes, the most one batch takes: "
        "split it (split -l), each part all or nothing",
        2,
    ),
    (
        ["worker", "s", "--exec", "true", "--timeout", "0", "--drain"],
        None,
        "ephq worker: Invalid value for --timeout: a handler given no time is stopped at once "
        "(see 'ephq worker --help')",
        2,
    ),
    (
        ["worker", "s", "--exec", "true", "--concurrency", "1001", "--drain"],
        None,
        "ephq worker: Invalid value for '--concurrency' / '-c': 1001 is not in the range "
        "1<=x<=1000. (see 'ephq worker --help')",
        2,
    ),
]


def test_dequeue_piped_to_ack_settles_a_message_holding_a_line_separator(home: Path) -> None:
    """U+2028 may stand inside a JSON string, and dequeue writes the data as enqueued: the
    line ended there for ack, which refused the line (exit 2) and left the message leased."""
    ok(home, "enqueue", "s", stdin='"a\u2028b"')
    line = ok(home, "dequeue", "s")
    assert "\u2028" in line
    assert ephq(home, "ack", "s", "-", stdin=line).returncode == 0
    assert json.loads(ok(home, "stats", "s", "--json"))["inflight"] == 0


def test_settling_from_stdin_without_line_ends_fails_at_once(home: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    with open("/dev/zero", "rb") as zeros:
        done = subprocess.run(
            [EPHQ, "ack", "s", "-"],
            stdin=zeros,
            capture_output=True,
            text=True,
            env=environ | store_environment(home),
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "ephq: stdin, line 1: over 68,157,440 bytes, more than a line of dequeue's output\n"
    )


def test_a_line_that_is_not_utf8_is_named_by_its_number(home: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b'1\n"\xff"\n3\n')
    result = ephq(home, "enqueue", "s", "--lines", str(batch))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"ephq: {batch}, line 2: not UTF-8 text: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(("args", "stdin", "line", "code"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_line_and_changes_nothing(
    home: Path, tmp_path: Path, args: list[str], stdin: str | None, line: str, code: int
) -> None:
    msg = tmp_path / "msg.json"
    msg.write_text('{"a" 1}')
    ok(home, "enqueue", "s", stdin='"already here"')
    leased = lease(home)
    before = snapshot(home)
    args = [str(msg) if a == "MSG" else leased["receipt"] if a == "RECEIPT" else a for a in args]
    result = ephq(home, *args, stdin=stdin)
    assert (result.returncode, result.stdout) == (code, "")
    assert result.stderr == line.format(msg=msg) + "\n"
    assert snapshot(home) == before


@pytest.mark.both_backends
def test_dequeue_into_a_closed_pipe_gives_the_messages_back(store: str, home: Path) -> None:
    """`ephq dequeue s | handler` whose handler is gone before reading: what could not be
    written reached nobody, so it is visible again at once, this delivery not counted."""
    sent = [ok(home, "enqueue", "s", stdin=str(n)).strip() for n in range(3)]
    read, write = os.pipe()
    os.close(read)  # the reader left before a byte was written
    try:
        result = _into(home, write, "dequeue", "s", "--max", "2")
    finally:
        os.close(write)
    assert result == (
        1,
        "ephq: cannot write to stdout (Broken pipe): 2 leased messages given back, visible again\n",
    )
    got = [json.loads(line) for line in ok(home, "dequeue", "s", "--max", "5").splitlines()]
    assert [(m["id"], m["attempts"]) for m in got] == [(mid, 1) for mid in sent]


def _into(home: Path, stdout: int | None, *args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run ephq with its stdout on the given fd (None: closed before it starts, as `>&-`):
    exit status and stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EPHQ_")}
    environ.update(store_environment(home))
    closing = ["sh", "-c", 'exec "$@" >&-', "sh"] if stdout is None else []
    result = subprocess.run(
        [*closing, EPHQ, *args],
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is a full disk")
def test_output_to_a_full_disk_is_one_line_and_exit_7(home: Path) -> None:
    """stdout redirected to a full disk: one line, exit 7, whatever the command writes and
    however (a JSON line, a table, Rich); enqueue says its messages were stored all the same."""
    ok(home, "enqueue", "s", stdin="1")
    line = "ephq: cannot write to stdout: No space left on device\n"
    with open("/dev/full", "w") as full:
        for args in (["peek", "s"], ["stats"], ["stats", "s", "--json"], ["export", "s"]):
            assert _into(home, full.fileno(), *args) == (7, line), args
        enqueued = _into(home, full.fileno(), "enqueue", "s", stdin="2")
        # Not 1, which says the queue was empty: the messages are given back, the disk named.
        dequeued = _into(home, full.fileno(), "dequeue", "s", "--max", "2")
    assert enqueued == (7, "ephq: enqueued 1 message, but " + line.removeprefix("ephq: "))
    assert dequeued == (
        7,
        "ephq: cannot write to stdout (No space left on device): 2 leased messages given back, "
        "visible again\n",
    )
    got = [json.loads(row) for row in ok(home, "dequeue", "s", "--max", "5").splitlines()]
    assert [(m["data"], m["attempts"]) for m in got] == [(1, 1), (2, 1)]


def test_a_stdout_closed_from_the_start_is_one_line(home: Path) -> None:
    """`ephq enqueue s >&-`: Python starts with no stdout at all; the command still says what
    happened in one line (the message was stored; a dequeued one was given back)."""
    line = "cannot write to stdout: it is closed"
    enqueued = _into(home, None, "enqueue", "s", stdin="1")
    assert enqueued == (7, f"ephq: enqueued 1 message, but {line}\n")
    assert _into(home, None, "stats") == (7, f"ephq: {line}\n")
    assert _into(home, None, "dequeue", "s") == (
        7,
        "ephq: cannot write to stdout (it is closed): 1 leased message given back, visible again\n",
    )
    (again,) = [json.loads(row) for row in ok(home, "dequeue", "s").splitlines()]
    assert (again["data"], again["attempts"]) == (1, 1)


def test_output_to_a_pipe_whose_reader_left_is_fine(home: Path) -> None:
    """`ephq peek s | head -1` once head has left: nothing more to say, exit 0."""
    ok(home, "enqueue", "s", stdin="1")
    read, write = os.pipe()
    os.close(read)
    try:
        assert _into(home, write, "peek", "s") == (0, "")
        assert _into(home, write, "enqueue", "s", stdin="2") == (0, "")  # stored all the same
    finally:
        os.close(write)
    assert json.loads(ok(home, "stats", "s", "--json"))["ready"] == 2


def test_a_byte_order_mark_an_editor_put_first_is_ignored(home: Path, tmp_path: Path) -> None:
    """A file saved with a UTF-8 BOM (as some Windows editors do) is read as the JSON after it,
    for one message, for --lines and for import (RFC 8259 lets a parser ignore it)."""
    bom = "\ufeff"
    one = tmp_path / "one.json"
    one.write_text(bom + '{"n": 1}', encoding="utf-8")
    many = tmp_path / "many.jsonl"
    many.write_text(bom + '{"n": 2}\n{"n": 3}\n', encoding="utf-8")
    ok(home, "enqueue", "s", str(one))
    ok(home, "enqueue", "s", "--lines", str(many))
    exported = tmp_path / "backlog.jsonl"
    exported.write_text(bom + ok(home, "export", "s"), encoding="utf-8")
    assert ok(home, "import", "t", str(exported)).strip() == "3"
    for stream in ("s", "t"):
        got = [json.loads(line) for line in ok(home, "dequeue", stream, "-n", "5").splitlines()]
        assert [m["data"] for m in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert ephq(home, "enqueue", "s", stdin=bom).returncode == 2  # a mark alone is no message


def test_debug_shows_the_traceback(home: Path) -> None:
    quiet = ephq(home, "enqueue", "bad/name", stdin="1")
    assert "Traceback" not in quiet.stderr
    loud = ephq(home, "--debug", "enqueue", "bad/name", stdin="1")
    assert "Traceback" in loud.stderr and loud.returncode != 0
    env = ephq(home, "enqueue", "bad/name", stdin="1", EPHQ_DEBUG="1")
    assert "Traceback" in env.stderr


def test_no_arguments_shows_help(home: Path) -> None:
    result = ephq(home)
    assert result.returncode == 2
    assert "Usage: ephq [OPTIONS] COMMAND" in result.stderr
    assert "Exit status: 0 success" in result.stderr


def test_python_dash_m_runs_the_same_cli(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ephq", "enqueue", "s"],
        input="5",
        capture_output=True,
        text=True,
        env={**os.environ, "EPHQ_HOME": str(home)},
        check=True,
    )
    assert len(result.stdout.strip()) == 24


@pytest.mark.skipif(shutil.which("script") is None, reason="script(1) gives the pseudo-terminal")
def test_progress_shows_on_a_terminal_only(home: Path, tmp_path: Path) -> None:
    lines = tmp_path / "big.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(600)))
    environ = {**os.environ, "EPHQ_HOME": str(home)}
    on_tty = subprocess.run(
        ["script", "-qec", f"{EPHQ} enqueue big --lines {lines} > {tmp_path}/ids", "/dev/null"],
        capture_output=True,
        text=True,
        env=environ,
        check=True,
        timeout=60,
    )
    assert "enqueuing" in on_tty.stdout
    assert len((tmp_path / "ids").read_text().split()) == 600
    piped = ephq(home, "enqueue", "big", "--lines", str(lines))
    assert piped.stderr == "" and len(piped.stdout.split()) == 600


def test_no_fsync_and_peek_at_dead_letters(home: Path) -> None:
    ok(home, "--no-fsync", "config", "s", "--max-attempts", "1")
    mid = ok(home, "--no-fsync", "enqueue", "s", stdin='"x"').strip()
    ok(home, "nack", "s", lease(home)["receipt"], "--reason", "nope")
    peeked = json.loads(ok(home, "peek", "s", "--dlq"))
    assert (peeked["id"], peeked["receipt"]) == (mid, None)
    assert peeked["metadata"]["dead"]["error"] == "nope"
    assert ephq(home, "peek", "s").returncode == 1
    env_flag = ephq(home, "enqueue", "s", stdin="1", EPHQ_NO_FSYNC="1")
    assert env_flag.returncode == 0 and len(env_flag.stdout.strip()) == 24


def test_version(home: Path) -> None:
    from importlib.metadata import version

    assert ok(home, "--version") == f"ephq {version('ephq')}\n"


def test_a_home_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "not-a-dir"
    home.write_text("notes")
    for args, stdin in ((["stats"], None), (["enqueue", "s"], "1"), (["check"], None)):
        got = ephq(home, *args, stdin=stdin)
        assert (got.returncode, got.stdout) == (7, "")
        assert got.stderr == (
            f"ephq: the ephq home {home} (from --home or EPHQ_HOME) is not a directory\n"
        )
    assert home.read_text() == "notes"


def test_a_home_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """Not "no streams" from stats and a stream's settings blamed by enqueue."""
    above = tmp_path / "not-a-dir"
    above.write_text("notes")
    home = above / "queues" / "ephq"
    for args, stdin in ((["stats"], None), (["enqueue", "s"], "1"), (["dequeue", "s"], None)):
        got = ephq(home, *args, stdin=stdin)
        assert (got.returncode, got.stdout) == (7, "")
        assert got.stderr == (
            f"ephq: the ephq home {home} (from --home or EPHQ_HOME) cannot be made: "
            f"{above} is not a directory\n"
        )
    assert above.read_text() == "notes"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no procfs")
def test_a_home_where_no_directory_can_be_made_says_so() -> None:
    got = ephq(Path("/proc/self"), "enqueue", "s", stdin="1")
    assert (got.returncode, got.stdout) == (7, "")
    assert got.stderr == "ephq: cannot create /proc/self/s: /proc/self takes no new directories\n"


@pytest.mark.both_backends
def test_a_receipt_of_another_stream_is_named_as_such(store: str, home: Path) -> None:
    ok(home, "enqueue", "orders", stdin="1")
    ok(home, "enqueue", "emails", stdin="2")
    receipt = lease(home, "orders")["receipt"]
    for command in ("ack", "nack", "release"):
        wrong = ephq(home, command, "emails", receipt)
        assert (wrong.returncode, wrong.stdout) == (2, "")
        assert wrong.stderr == (
            "ephq: this receipt is for a message of stream 'orders', not 'emails'\n"
        )
    ok(home, "ack", "orders", receipt)  # the lease was left as it was
