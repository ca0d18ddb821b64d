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


DATA_TEXTS = ['{"a":  1}', '[1, 2.50, "x"]\n', '"  spaced  "', '{\n  "pretty": true\n}']


@pytest.mark.parametrize("data_json", DATA_TEXTS)
def test_a_sealed_record_reads_back_verbatim_and_its_seal_checks(data_json: str) -> None:
    raw = record.encode("18ecf30c49a400cdb05f936c", "s", 10**18, data_json, {})
    for size in (0, 512, 4096):
        kept = record.sealed(raw, size)
        assert len(kept) == max(size, len(raw) + record.SEAL_BYTES)
        assert json.loads(kept)["data"] == json.loads(data_json)  # one JSON document still
        assert record.decode(kept).data_json == data_json  # the data's text as it was sent
        assert record.unsealed(kept) == raw


def test_a_seal_tells_a_torn_or_changed_record_from_a_whole_one() -> None:
    new = record.encode("18ecf30c49a400cdb05f936c", "s", 10**18, '"' + "n" * 900 + '"', {})
    old = record.encode("18ecf30c49a400cdb05f936d", "s", 10**18, '"' + "o" * 900 + '"', {})
    new_file, old_file = record.sealed(new, 1024), record.sealed(old, 1024)
    torn = new_file[:512] + old_file[512:]  # the first sector written, the rest not
    assert json.loads(torn)["id"] == "18ecf30c49a400cdb05f936c"  # parses, as a whole one would
    assert record.unsealed(torn) is None
    flipped = bytearray(new_file)
    flipped[100] ^= 1
    assert record.unsealed(bytes(flipped)) is None
    assert record.unsealed(new) is None  # never sealed
    assert record.unsealed(bytes(1024)) is None  # a pooled file's zeros
