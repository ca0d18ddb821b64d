"""`ephq dlq …`: a stream's dead letters, in any state: ready, delayed (a dead-letter
handler's retry) or leased by a dead-letter consumer. Every command here sees all of them."""

import json
import sys
from typing import Annotated

import typer

from ..errors import BadInput
from . import render
from .params import AsJson, DeadLetterIds, Stream, complete_dead_letter, settings


def dlq_list(
    ctx: typer.Context,
    stream: Stream,
    as_json: AsJson = False,
    max_messages: Annotated[
        int, typer.Option("--max", "-n", min=1, metavar="N", help="Show up to N.")
    ] = 100,
) -> None:
    """List dead letters, oldest first: id, attempts, state, time of death and last error.

    Exit status 4 if the stream is not there.
    """
    dead = settings(ctx).queue().dead_letters(stream, max_messages)
    if as_json:
        sys.stdout.write("".join(render.message_line(m) + "\n" for m in dead))
        return
    rows = render.dead_letter_rows(dead)
    render.print_table(render.DEAD_COLUMNS, rows)


def dlq_show(
    ctx: typer.Context,
    stream: Stream,
    message_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="The dead letter's id.", autocompletion=complete_dead_letter
        ),
    ],
    as_json: AsJson = False,
) -> None:
    """Print one dead letter as a JSON object, with its data, state and why it died (always
    JSON: --json is accepted, as by every command whose output is data)."""
    del as_json
    print(render.message_line(settings(ctx).queue().dead_letter(stream, message_id)))


def dlq_redrive(
    ctx: typer.Context,
    stream: Stream,
    ids: DeadLetterIds = None,
    as_json: AsJson = False,
) -> None:
    """Put dead letters back in STREAM with fresh attempts; prints the ids moved.

    When STREAM is a dead-letter stream (another stream's `config --dead-letter-stream`), its
    messages that died in another stream go back there, each to its place in FIFO order. A
    dead letter leased by a consumer is taken back from it too: its receipt then gets exit
    status 3.
    """
    q = settings(ctx).queue()
    total = len(ids) if ids else q.stats(stream).dlq
    with render.progress_bar("redriving", total) as progress:
        moved = q.redrive(stream, ids or None, progress=progress)
    _print_ids(stream, moved, as_json)


def dlq_purge(
    ctx: typer.Context,
    stream: Stream,
    ids: DeadLetterIds = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Yes, delete every dead letter (when no ID is given).")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Delete dead letters for good (those named, or with --yes all); prints the ids deleted."""
    if not ids and not yes:
        raise BadInput(
            f"dlq purge without ids deletes every dead letter of {stream!r}: add --yes to do it"
        )
    removed = settings(ctx).queue().purge_dead_letters(stream, ids or None)
    _print_ids(stream, removed, as_json)


def _print_ids(stream: str, ids: list[str], as_json: bool) -> None:
    if as_json:
        lines = [json.dumps({"stream": stream, "id": i}, separators=(",", ":")) for i in ids]
    else:
        lines = ids
    sys.stdout.write("".join(line + "\n" for line in lines))
