"""A message file's bytes: the header written by hand is exactly what json.dumps writes, and
every record parses back to what went in."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from ephq.files import record

CASES: list[tuple[str, int, dict[str, Any]]] = [
    ("s", 1_764_540_000_123_456_789, {}),
    ("a.b_c-D9", 1_764_540_000_000_000_000, {}),  # microseconds of zero are still written
    ("s", 0, {}),
    ("s", (1 << 63) - 1, {}),
    ('quo"te', 1_764_540_000_123_456_789, {}),  # escaped: not a stream name ephq takes
    ("back\\slash", 1_764_540_000_123_456_789, {}),
    ("é", 1_764_540_000_123_456_789, {}),
    ("tab\there", 1_764_540_000_123_456_789, {}),
    ("s", 1_764_540_000_123_456_789, {"dead": {"stream": "s", "error": 'a "quote"\n'}}),
]


@pytest.mark.parametrize(("stream", "ns", "meta"), CASES)
def test_a_record_is_what_json_dumps_writes(stream: str, ns: int, meta: dict[str, Any]) -> None:
    message_id = "18ecf30c49a400cdb05f936c"
    moment = datetime.fromtimestamp(ns // 1000 // 1_000_000, tz=timezone.utc)
    enqueued_at = moment.replace(microsecond=ns // 1000 % 1_000_000).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    head = {"v": 1, "id": message_id, "stream": stream, "enqueued_at": enqueued_at, "meta": meta}
    data = '{"n": 1, "text": "as sent"}'
    expected = json.dumps(head, separators=(",", ":"))[:-1] + ',"data":' + data + "}"
    raw = record.encode(message_id, stream, ns, data, meta)
    assert raw == expected.encode()
    back = record.decode(raw)
    assert (back.id, back.stream, back.meta, back.data_json) == (message_id, stream, meta, data)
