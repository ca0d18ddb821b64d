"""A message file's contents: one JSON object, format version first, the data last and verbatim.

    {"v":1,"id":"…","stream":"…","enqueued_at":"2026-11-27T09:54:57.123456Z","meta":{},"data":…}

The data's text is written exactly as enqueued, so a handler receives the bytes the producer
sent (number spelling, key order, spacing), and the whole file still parses as JSON.

A file the pool may refill (pool.py) holds more: the record, then its seal, then spaces to the
file's size, all of it JSON whitespace after the object, so every reader still sees one JSON
document. The seal is a line of 32 spaces and tabs spelling the record's CRC-32, ended by a
line end: it tells a whole record from one a power loss tore, where the file's name cannot
(docs/design.md, "A flush of data alone").
"""

import json
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from ..message import MAX_MESSAGE_BYTES

FORMAT_VERSION = 1
_COMPACT = (",", ":")
# The largest file a reader accepts as a message: the most data a message may carry (the Queue
# refuses more), its header, and a dead letter's metadata.
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES + (1 << 20)
# A dead letter's error is cut to this many characters: a handler's stderr can be anything.
MAX_ERROR_CHARS = 16384


class CorruptRecord(ValueError):
    """A message file that does not hold a message; the reason says why."""


class Record(NamedTuple):
    id: str
    stream: str
    meta: dict[str, Any]
    data: Any
    data_json: str


_EPOCH = datetime(1970, 1, 1)


def iso_utc(ns: int) -> str:
    """The instant as ISO 8601 in UTC to the microsecond, as 2026-11-27T09:54:57.123456Z."""
    # Exact integer microseconds, formatted in C: strftime took three times as long.
    moment = _EPOCH + timedelta(microseconds=ns // 1000)
    return moment.isoformat(timespec="microseconds") + "Z"


def _header(message_id: str, stream: str, enqueued_ns: int, meta: dict[str, Any]) -> str:
    if not meta and _plain(message_id) and _plain(stream):
        # What json.dumps makes of the usual header, at a quarter of its cost (every enqueue
        # pays it): no value here needs escaping.
        return (
            f'{{"v":{FORMAT_VERSION},"id":"{message_id}","stream":"{stream}",'
            f'"enqueued_at":"{iso_utc(enqueued_ns)}","meta":{{}},"data":'
        )
    head = {
        "v": FORMAT_VERSION,
        "id": message_id,
        "stream": stream,
        "enqueued_at": iso_utc(enqueued_ns),
        "meta": meta,
    }
    return json.dumps(head, separators=_COMPACT)[:-1] + ',"data":'


def _plain(text: str) -> bool:
    """Whether json.dumps writes text as it is, between quotes."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def encode(
    message_id: str, stream: str, enqueued_ns: int, data_json: str, meta: dict[str, Any]
) -> bytes:
    return (_header(message_id, stream, enqueued_ns, meta) + data_json + "}").encode()


_SEAL_BITS = 32
SEAL_BYTES = _SEAL_BITS + 2  # a line end, the bits, a line end
_TO_SEAL = bytes.maketrans(b"01", b" \t")
_FROM_SEAL = bytes.maketrans(b" \t", b"01")
_JSON_SPACE = " \t\n\r"


def sealed(record: bytes, size: int = 0) -> bytes:
    """The record, its seal, and spaces up to size bytes (if it is more)."""
    bits = format(zlib.crc32(record), "032b").encode()
    whole = record + b"\n" + bits.translate(_TO_SEAL) + b"\n"
    return whole + b" " * (size - len(whole))


def unsealed(raw: bytes) -> bytes | None:
    """The record a sealed file holds, if its seal is whole and matches it; else None."""
    body = raw.rstrip(b" ")
    if (
        len(body) <= SEAL_BYTES
        or body[-1:] != b"\n"
        or body[-SEAL_BYTES : -SEAL_BYTES + 1] != b"\n"
    ):
        return None
    bits = body[-SEAL_BYTES + 1 : -1]
    if bits.strip(b" \t"):
        return None
    record = body[:-SEAL_BYTES]
    return record if zlib.crc32(record) == int(bits.translate(_FROM_SEAL), 2) else None


def decode(raw: bytes) -> Record:
    text, doc = _parse(raw)
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    return Record(doc["id"], str(doc.get("stream", "")), meta, doc["data"], _data_text(text, doc))


# json.loads of a record costs twice what its C scanner does: the rest is the Python layers
# around it (decoder, whitespace regexes). A record as ephq writes it has no whitespace around
# it, so the scanner alone reads it; anything else goes through json.loads, whose verdict and
# message stand.
_Scan = Callable[[str, int], tuple[Any, int]]
_scan: _Scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse(raw: bytes) -> tuple[str, dict[str, Any]]:
    """The text and the object of a record; CorruptRecord if it is not one."""
    try:
        # What follows the object (a seal, padding: see above) is whitespace, not data.
        text = raw.decode().rstrip(_JSON_SPACE)
    except UnicodeDecodeError as exc:
        raise CorruptRecord(f"not JSON: {exc}") from None
    try:
        doc, end = _scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(text):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CorruptRecord(f"not JSON: {exc}") from None
        except RecursionError:  # written before ephq limited nesting (jsontext.py)
            raise CorruptRecord("nested too deeply to read") from None
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise CorruptRecord(f"not an ephq message of format version {FORMAT_VERSION}")
    if "data" not in doc or not isinstance(doc.get("id"), str):
        raise CorruptRecord("a message must have an id and data")
    return text, doc


def record_id(raw: bytes) -> str:
    """The id of the message a file holds, once the whole file is known to be a record (as
    decode checks, without keeping the data's text: what `check` needs of every file)."""
    return str(_parse(raw)[1]["id"])


_PLAIN_TAIL = ',"meta":{},"data":'
_PLAIN_KEYS = ["v", "id", "stream", "enqueued_at", "meta", "data"]


def _data_text(text: str, doc: dict[str, Any]) -> str:
    """The data exactly as written when the file is as ephq wrote it, else re-encoded."""
    if not doc.get("meta") and list(doc) == _PLAIN_KEYS and isinstance(doc["stream"], str):
        # The usual message: the header holds only flat values, so the first such tail in the
        # text (quotes inside strings are escaped) is where the data begins.
        at = text.find(_PLAIN_TAIL)
        if at > 0 and text.endswith("}"):
            return text[at + len(_PLAIN_TAIL) : -1]
    head = {k: v for k, v in doc.items() if k != "data"}
    prefix = json.dumps(head, separators=_COMPACT)[:-1] + ',"data":'
    if text.startswith(prefix) and text.endswith("}"):
        return text[len(prefix) : -1]
    return json.dumps(doc["data"], separators=_COMPACT)
