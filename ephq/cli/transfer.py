"""Moving a backlog between stores: `ephq export STREAM` writes JSON Lines, `ephq import STREAM`
reads them, so `ephq export s | EPHQ_URL=… ephq import s` moves a stream from files to
PostgreSQL (or back)."""

import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from ..errors import BadInput
from ..ids import id_time_ns
from ..jsontext import MAX_NESTING, check_nesting
from ..message import Exported
from . import render
from .params import Stream, settings
from .reading import MESSAGE_LINE_LIMIT, read_lines

NS = 1_000_000_000


def export(ctx: typer.Context, stream: Stream) -> None:
    """Write every message of STREAM (ready, delayed, in flight, and its dead letters) as JSON
    Lines: id, stream, state, attempts, enqueued_at, visible_at (of a delayed one), metadata
    and data (as enqueued). Exit status 4 if the stream is not there."""
    out = sys.stdout
    for record in settings(ctx).queue().export(stream):
        out.write(_line(stream, record) + "\n")


def _line(stream: str, record: Exported) -> str:
    head: dict[str, Any] = {
        "id": record.id,
        "stream": stream,
        "state": record.state,
        "attempts": record.attempts,
        "enqueued_at": _iso(id_time_ns(record.id)),
        "visible_at": None if record.visible_at_ns is None else _iso(record.visible_at_ns),
        "metadata": record.metadata,
    }
    data = record.data_json
    if "\n" in data or "\r" in data:  # pretty-printed when enqueued: one line is JSON Lines
        data = json.dumps(json.loads(data), separators=(",", ":"))
    return json.dumps(head, separators=(",", ":"))[:-1] + ',"data":' + data + "}"


def _iso(ns: int) -> str:
    return render.iso(datetime.fromtimestamp(ns / NS, tz=timezone.utc)) or ""


def import_command(
    ctx: typer.Context,
    stream: Stream,
    file: Annotated[
        str | None,
        typer.Argument(metavar="[FILE|-]", help="What export wrote; - or none: stdin."),
    ] = None,
) -> None:
    """Load what `ephq export` wrote into STREAM, all or nothing, keeping ids (so order),
    attempts, due times and dead letters; a message that was in flight comes in ready. Prints
    how many. Exit status 2, with nothing imported, for a bad line or an id already there."""
    numbered, source = read_lines(file, MESSAGE_LINE_LIMIT, "more than an exported message")
    records = []
    line_of: dict[str, int] = {}
    for number, line in numbered:
        try:
            record = _record(line)
        except BadInput as exc:
            raise BadInput(f"{source}, line {number}: {exc}") from None
        first = line_of.setdefault(record.id, number)
        if first != number:
            raise BadInput(
                f"{source}, line {number}: message {record.id} is already on line {first}"
            )
        records.append(record)
    print(settings(ctx).queue().import_messages(stream, records))


def _record(line: str) -> Exported:
    # Measured before it is parsed: how deep a parser recurses before it gives up is the
    # Python version's (3.13's parses what 3.11's cannot), the limit is ephq's.
    check_nesting(line, around=1)
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise BadInput(f"invalid JSON: {exc}") from None
    except RecursionError:  # past the limit already refused: a stack nearly used up
        raise BadInput(f"nested too deeply to read (at most {MAX_NESTING} levels)") from None
    if not isinstance(doc, dict) or "data" not in doc:
        raise BadInput("not a line of ephq export: an object with id, state and data")
    for field, kind in (("id", str), ("state", str), ("attempts", int)):
        if not isinstance(doc.get(field), kind):
            raise BadInput(f"{field!r} is missing or not a {kind.__name__}")
    metadata = doc.get("metadata") or {}
    return Exported(
        doc["id"],
        doc["state"],
        doc["attempts"],
        _ns(doc.get("visible_at")),
        metadata,
        _raw_data(line, doc["data"]),
    )


def _ns(text: object) -> int | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise BadInput("visible_at must be a time, as export writes it")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"visible_at {text!r} is not a time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * NS)


def _raw_data(line: str, data: Any) -> str:
    """The data's text exactly as the line holds it when it is last (as export writes it), so
    that a value comes back byte for byte; else the value written compactly."""
    compact = json.dumps(data, separators=(",", ":"))
    at = line.rfind(',"data":')
    if at >= 0 and line.rstrip().endswith("}"):
        candidate = line[at + len(',"data":') : line.rstrip().rfind("}")].strip()
        try:
            if json.dumps(json.loads(candidate), separators=(",", ":")) == compact:
                return candidate
        except (ValueError, RecursionError):
            pass
    return compact
