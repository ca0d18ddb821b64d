"""`ephq enqueue`: one JSON document, or JSON Lines, from a file or stdin."""

import json
import sys
from typing import Annotated

import typer

from .. import durations
from ..errors import BadInput, InvalidJSON
from ..ids import check_stream_name
from ..jsontext import checked_json
from . import render
from .output import OutputFailed
from .params import Delay, Stream, settings
from .reading import read_input, read_lines

# How far past the stream's max size a line of --lines is read: room for JSON whitespace.
LINE_SLACK = 4096


def enqueue(
    ctx: typer.Context,
    stream: Stream,
    file: Annotated[
        str | None,
        typer.Argument(
            metavar="[FILE|-]", help="A file holding one JSON document; - or none: stdin."
        ),
    ] = None,
    delay: Delay = "0",
    lines: Annotated[
        bool,
        typer.Option(
            "--lines",
            help="JSON Lines: one message per line (blank lines skipped), all enqueued or none.",
        ),
    ] = False,
    dedup_key: Annotated[
        str | None,
        typer.Option(
            "--dedup-key",
            metavar="KEY",
            help="If the stream took KEY within its dedup window (ephq config --dedup-window, "
            "default 5m), store nothing and print the first message's id.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="KEY",
            help="The message's group: a group's messages are delivered one at a time, in "
            "enqueue order (while one is leased or waiting for its retry, the next waits); "
            "other groups run in parallel.",
        ),
    ] = None,
    group_field: Annotated[
        str | None,
        typer.Option(
            "--group-field",
            metavar="NAME",
            help="With --lines: each line's group is its top-level field NAME (text or a whole "
            "number; a line without it has none).",
        ),
    ] = None,
    dedup_key_field: Annotated[
        str | None,
        typer.Option(
            "--dedup-key-field",
            metavar="NAME",
            help="With --lines: each line's dedup key is its top-level field NAME (text or a "
            "whole number; a line without it has none).",
        ),
    ] = None,
) -> None:
    """Add a message (or, with --lines, many) to STREAM and print each new id on its own line.

    A message larger than the stream's max size (1 MiB unless configured with `ephq config
    STREAM --max-size`) is refused with exit status 2, before it is read whole; so is one
    nested more than 128 levels deep in arrays and objects.
    """
    check_stream_name(stream)
    delay_s = durations.parse(delay, "--delay")
    if lines and dedup_key is not None:
        raise BadInput("--dedup-key names one message: with --lines, use --dedup-key-field")
    if dedup_key_field is not None and not lines:
        raise BadInput("--dedup-key-field goes with --lines: for one message, use --dedup-key")
    if lines and group is not None:
        raise BadInput("--group names one message's group: with --lines, use --group-field")
    if group_field is not None and not lines:
        raise BadInput("--group-field goes with --lines: for one message, use --group")
    q = settings(ctx).queue()
    if not lines:
        limit = q.config(stream).max_size
        raw, source = read_input(file, limit + 1)
        if len(raw) > limit:
            raise BadInput(
                f"{source}: the message is over {limit:,} bytes, the most stream {stream!r} "
                f"takes (ephq config {stream} --max-size)"
            )
        try:
            ids = [q.enqueue_json(stream, raw, delay_s, dedup_key=dedup_key, group=group)]
        except InvalidJSON as exc:
            raise _located(exc, source) from None
    else:
        # A line is read up to a little past the stream's max size (JSON whitespace around a
        # message is not part of it); the Queue measures each message exactly.
        limit = q.config(stream).max_size
        numbered, source = read_lines(
            file, limit + LINE_SLACK, f"more than a message of stream {stream!r} may hold"
        )
        texts = json_lines(numbered, source)
        numbers = [number for number, _ in numbered]
        keys = None
        if dedup_key_field is not None:
            keys = keys_of(texts, numbers, dedup_key_field, source, "a dedup key")
        groups = None
        if group_field is not None:
            groups = keys_of(texts, numbers, group_field, source, "a group")
        with render.progress_bar("enqueuing", len(texts)) as progress:
            ids = q.enqueue_many_json(
                stream, texts, delay_s, progress=progress, dedup_keys=keys, groups=groups
            )
    try:
        sys.stdout.write("".join(i + "\n" for i in ids))
        sys.stdout.flush()
    except OutputFailed as exc:  # stored all the same: a retry would enqueue them twice
        s = "s" if len(ids) != 1 else ""
        raise OutputFailed(f"enqueued {len(ids)} message{s}, but {exc}") from None


def keys_of(
    texts: list[str], line_numbers: list[int], field: str, source: str, what: str
) -> list[str | None]:
    """Each message's dedup key or group: its top-level field, as text (None where it has
    none)."""
    keys: list[str | None] = []
    for number, text in zip(line_numbers, texts, strict=True):
        doc = json.loads(text)
        value = doc.get(field) if isinstance(doc, dict) else None
        if value is None or isinstance(value, str):
            keys.append(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            keys.append(str(value))
        else:
            raise BadInput(
                f"{source}, line {number}: field {field!r} is {type(value).__name__}; "
                f"{what} is text or a whole number"
            )
    return keys


def _located(exc: InvalidJSON, source: str, line_offset: int | None = None) -> BadInput:
    if line_offset is not None:
        return BadInput(
            f"{source}, line {line_offset}, column {exc.column}: invalid JSON: {exc.reason}"
        )
    if exc.line:
        return BadInput(
            f"{source}, line {exc.line}, column {exc.column}: invalid JSON: {exc.reason}"
        )
    return BadInput(f"{source}: {exc}")


def json_lines(numbered: list[tuple[int, str]], source: str) -> list[str]:
    """The JSON values of numbered lines (reading.read_lines), each exactly as written."""
    texts = []
    for number, line in numbered:
        try:
            texts.append(checked_json(line))
        except InvalidJSON as exc:
            raise _located(exc, source, line_offset=number) from None
        except BadInput as exc:
            raise BadInput(f"{source}, line {number}: {exc}") from None
    if not texts:
        raise BadInput(f"{source}: no messages: every line is empty")
    return texts
