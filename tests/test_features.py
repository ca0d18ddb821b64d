"""Queue features beyond the basic semantics (issue 13): rate limits, deduplication keys, ...

Each is exercised through the CLI and the worker, with several real processes, on every backend.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from ephq.errors import BadInput
from ephq.worker.rate import Rate, TokenBucket, parse_rate
from tests.conftest import open_store
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
def test_a_rate_limited_worker_starts_no_more_than_the_rate(
    store: str, home: Path, tmp_path: Path
) -> None:
    q = open_store(home)
    q.enqueue_many("mail", list(range(12)))
    starts = tmp_path / "starts"
    handler = script(tmp_path, f"date +%s.%N >> {starts}\n")
    before = time.time()
    code, err = finish(
        start_worker(home, "mail", "--exec", handler, "--rate", "4/s", "-c", "4", "--drain")
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
def test_waiting_for_the_rate_holds_no_lease(store: str, home: Path, tmp_path: Path) -> None:
    q = open_store(home)
    q.enqueue_many("slow", ["first", "second", "third"])
    handled = tmp_path / "handled"
    worker = start_worker(
        home, "slow", "--exec", f"cat >> {handled}; echo >> {handled}", "--rate", "1/m", "-c", "3"
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
