"""Bad input: a clear error from the hierarchy, carrying its exit code, and nothing written."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ephq import BadInput, LeaseLost, NotFound, Queue
from ephq.worker import Worker
from ephq.worker.command import CommandHandler
from tests.conftest import snapshot

BAD_NAMES = ["", "-leading-dash", ".hidden", "a/b", "a b", "é", "x" * 129, "../up", None, 7]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_stream_name_is_rejected_before_touching_disk(q: Queue, home: Path, name: Any) -> None:
    with pytest.raises(BadInput, match="invalid stream name") as info:
        q.enqueue(name, 1)
    assert info.value.exit_code == 2
    assert not home.exists()


def test_longest_valid_stream_name_works(q: Queue) -> None:
    name = "a" + "b._-" * 31 + "xyz"
    assert len(name) == 128
    q.enqueue(name, 1)
    assert q.dequeue(name) is not None


def _nested(levels: int) -> Any:
    """Arrays and objects in turn, nested this many levels deep."""
    value: Any = 1
    for level in range(levels):
        value = [value] if level % 2 else {"a": value}
    return value


def test_data_nested_to_the_limit_is_taken_whole(q: Queue) -> None:
    # Brackets inside strings do not count; 128 levels of arrays and objects do not exceed it.
    text = '{"a":' * 64 + '["[[[[{{{{", ' * 64 + "1" + "]" * 64 + "}" * 64
    q.enqueue_json("s", text)
    q.enqueue("s", _nested(128))
    first, second = q.dequeue_many("s", 2)
    assert first.data_json == text
    assert second.data == _nested(128)


def _with_one_message(q: Queue, home: Path) -> tuple[str, dict[str, bytes]]:
    q.enqueue("s", "keep")
    m = q.dequeue("s", visibility=60)
    assert m is not None and m.receipt
    q.enqueue("s", "other")
    return m.receipt, snapshot(home)


BAD_CALLS: list[tuple[str, Callable[[Queue, str], object], str]] = [
    ("set", lambda q, r: q.enqueue("s", {1, 2}), "not JSON-serialisable"),
    ("nan", lambda q, r: q.enqueue("s", math.nan), "not JSON-serialisable"),
    ("object", lambda q, r: q.enqueue("s", object()), "not JSON-serialisable"),
    ("neg-delay", lambda q, r: q.enqueue("s", 1, delay=-1), "delay must be"),
    ("inf-delay", lambda q, r: q.enqueue("s", 1, delay=math.inf), "delay must be"),
    ("str-delay", lambda q, r: q.enqueue("s", 1, delay="5m"), "delay must be seconds"),  # type: ignore[arg-type]
    # (The column is the parser's: 3.13's names the comma, 9 in 3.11 the brace after it.)
    ("bad-json", lambda q, r: q.enqueue_json("s", '{"a": 1,}'), "invalid JSON at line 1, column "),
    ("json-nan", lambda q, r: q.enqueue_json("s", "[NaN]"), "NaN is not valid JSON"),
    ("empty-json", lambda q, r: q.enqueue_json("s", "  \n"), "message is empty"),
    ("batch-bad", lambda q, r: q.enqueue_many("s", [1, {2}]), "not JSON-serialisable"),
    ("batch-json", lambda q, r: q.enqueue_many_json("s", ["1", "[}"]), "line 1, column 2"),
    ("zero-vis", lambda q, r: q.dequeue("s", visibility=0), "visibility must be more than zero"),
    ("neg-wait", lambda q, r: q.dequeue("s", wait=-1), "wait must be"),
    ("max-0", lambda q, r: q.dequeue_many("s", 0), "max_messages must be"),
    ("receipt", lambda q, r: q.ack("s", "not-a-receipt"), "is not an ephq receipt"),
    ("receipt-type", lambda q, r: q.ack("s", 42), "a receipt is a string"),  # type: ignore[arg-type]
    ("nack-delay", lambda q, r: q.nack("s", r, delay=-5), "delay must be"),
    ("extend-zero", lambda q, r: q.extend("s", r, 0), "visibility must be more than zero"),
    ("reason", lambda q, r: q.nack("s", r, reason=5), "reason must be text"),  # type: ignore[arg-type]
    ("max-attempts", lambda q, r: q.configure("s", max_attempts=0), "max_attempts must be"),
    ("peek-n", lambda q, r: q.peek("s", 0), "n must be"),
    ("dlq-id", lambda q, r: q.dead_letter("s", "xyz"), "is not a message id"),
    ("redrive-id", lambda q, r: q.redrive("s", ["../../etc"]), "is not a message id"),
    ("too-big", lambda q, r: q.enqueue("s", "x" * (1 << 20)), "this message is 1,048,578 bytes"),
    (  # two bytes a character: measured in bytes, not characters
        "too-big-batch",
        lambda q, r: q.enqueue_many_json("s", ["1", '"' + "é" * (1 << 19) + '"']),
        "message 2 is 1,048,578 bytes of JSON; stream 's' takes at most 1,048,576",
    ),
    ("max-size", lambda q, r: q.configure("s", max_size=(64 << 20) + 1), "max_size must be"),
    # Nested past what a consumer's parser could always read (jsontext.py), and past what
    # Python's own parser and encoder can: a one-line error, not a RecursionError.
    ("deep-129", lambda q, r: q.enqueue_json("s", "[" * 129 + "]" * 129), "deeper than 128"),
    ("deep-json", lambda q, r: q.enqueue_json("s", "[" * 5000 + "]" * 5000), "deeper than 128"),
    ("deep-object", lambda q, r: q.enqueue("s", _nested(5000)), "deeper than 128"),
    ("deep-batch", lambda q, r: q.enqueue_many("s", [1, _nested(129)]), "deeper than 128"),
    # A Worker that could never work is refused before it starts a thread (a concurrency of 0
    # leased nothing and waited for good).
    ("worker-0", lambda q, r: Worker(q, "s", _noop, concurrency=0), "concurrency must be"),
    ("worker-vis", lambda q, r: Worker(q, "s", _noop, visibility=-1), "visibility must be"),
    ("worker-grace", lambda q, r: Worker(q, "s", _noop, grace=math.nan), "grace must be"),
    ("worker-max", lambda q, r: Worker(q, "s", _noop, max_messages=0), "max_messages must be"),
    ("worker-call", lambda q, r: Worker(q, "s", 42), "handler must be callable"),  # type: ignore[arg-type]
    ("worker-name", lambda q, r: Worker(q, "a/b", _noop), "invalid stream name"),
    # A thread each: tens of thousands ended in an abort of the C library, not an error.
    ("worker-many", lambda q, r: Worker(q, "s", _noop, concurrency=1001), "at most 1,000"),
    # A handler stopped as soon as it starts, every message retried until dead.
    ("timeout-0", lambda q, r: CommandHandler("true", store={}, timeout=0), "timeout must be"),
]


def _noop(message: object, cancelled: object) -> None:
    pass


@pytest.mark.parametrize(("label", "call", "message"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_changes_nothing(
    q: Queue, home: Path, label: str, call: Callable[[Queue, str], object], message: str
) -> None:
    receipt, before = _with_one_message(q, home)
    with pytest.raises(BadInput) as info:
        call(q, receipt)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2
    assert snapshot(home) == before


def test_well_formed_but_unknown_receipt_is_lease_lost(q: Queue, home: Path) -> None:
    receipt, before = _with_one_message(q, home)
    forged = receipt[:-8] + ("0" * 8 if not receipt.endswith("0" * 8) else "1" * 8)
    with pytest.raises(LeaseLost):
        q.ack("s", forged)
    with pytest.raises(LeaseLost):
        q.extend("s", forged, 10)
    assert snapshot(home) == before


def test_unknown_dead_letter_is_not_found(q: Queue) -> None:
    with pytest.raises(NotFound) as info:
        q.dead_letter("s", "0" * 24)
    assert info.value.exit_code == 4
