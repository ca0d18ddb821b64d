"""Managing a stream: `config`, `purge`, `check`."""

import json
from typing import Annotated, Any

import typer

from .. import sizes
from ..errors import BadInput
from ..message import StreamConfig
from . import render
from .params import AnyStream, AsJson, Stream, complete_stream, seconds, settings


def config(
    ctx: typer.Context,
    stream: Stream,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            metavar="N",
            help="Deliveries before a message is dead-lettered (default 5).",
        ),
    ] = None,
    visibility: Annotated[
        str | None,
        typer.Option("--visibility", "-v", metavar="D", help="Default lease length (30s)."),
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            metavar="SIZE",
            help="The largest message the stream takes, from 1KiB to 64MiB (default 1MiB); a "
            "larger one is refused with exit status 2.",
        ),
    ] = None,
    dedup_window: Annotated[
        str | None,
        typer.Option(
            "--dedup-window",
            metavar="D",
            help="How long an enqueue's --dedup-key is remembered (default 5m).",
        ),
    ] = None,
    dead_letter_stream: Annotated[
        str | None,
        typer.Option(
            "--dead-letter-stream",
            metavar="NAME",
            autocompletion=complete_stream,
            help="From now on, STREAM's dead letters become ordinary messages of stream NAME "
            "(metadata.dead says where they died and why); `ephq dlq redrive NAME` sends them "
            "back. Not STREAM itself, nor a loop of such streams.",
        ),
    ] = None,
    own_dead_letters: Annotated[
        bool,
        typer.Option(
            "--no-dead-letter-stream",
            help="Keep STREAM's dead letters in its own dead-letter queue again (the default).",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Show STREAM's settings, or change them (they are kept with the stream).

    A table on a terminal; one JSON object elsewhere or with --json (visibility in seconds,
    max_size in bytes, dedup_window in seconds).
    """
    q = settings(ctx).queue()
    if dead_letter_stream is not None and own_dead_letters:
        raise BadInput("--dead-letter-stream and --no-dead-letter-stream: give one")
    forward = "" if own_dead_letters else dead_letter_stream
    if (max_attempts, visibility, max_size, dedup_window, forward) == (None,) * 5:
        found = q.config(stream)
    else:
        size = None if max_size is None else sizes.parse(max_size, "--max-size")
        found = q.configure(
            stream,
            max_attempts,
            seconds(visibility, "--visibility"),
            size,
            dedup_window=seconds(dedup_window, "--dedup-window"),
            dead_letter_stream=forward,
        )
    if as_json or not render.for_people():
        print(json.dumps(_config_record(stream, found), separators=(",", ":")))
        return
    rows = [
        ("max_attempts", str(found.max_attempts)),
        ("visibility", f"{found.visibility:g}s"),
        ("max_size", sizes.text(found.max_size)),
        ("dedup_window", f"{found.dedup_window:g}s"),
        ("dead_letter_stream", found.dead_letter_stream or "(its own dead letters)"),
    ]
    render.console().print(render.rich_table(stream, ("setting", "value"), rows))


def _config_record(stream: str, found: StreamConfig) -> dict[str, Any]:
    return {
        "stream": stream,
        "max_attempts": found.max_attempts,
        "visibility": found.visibility,
        "max_size": found.max_size,
        "dedup_window": found.dedup_window,
        "dead_letter_stream": found.dead_letter_stream,
    }


def purge(
    ctx: typer.Context,
    stream: Stream,
    yes: Annotated[bool, typer.Option("--yes", help="Yes, delete every message.")] = False,
    as_json: AsJson = False,
) -> None:
    """Delete every message of STREAM (not its dead letters); prints how many."""
    if not yes:
        raise BadInput(f"purge deletes every message of {stream!r}: add --yes to do it")
    removed = settings(ctx).queue().purge(stream)
    if as_json:
        print(json.dumps({"stream": stream, "purged": removed}, separators=(",", ":")))
    else:
        print(removed)


def check(
    ctx: typer.Context,
    stream: AnyStream = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what can be fixed; quarantine what is not ephq's.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Verify the store: every message in one state, every file readable, no stale leftovers.

    Prints one line per problem, and one per entry of the quarantine (where repair and consumers
    set aside what is not ephq's, byte for byte); exit status 8 if a problem is left unrepaired.
    """
    problems = settings(ctx).queue().check(stream, repair=repair)
    for p in problems:
        if as_json:
            print(json.dumps(p._asdict(), separators=(",", ":")))
        else:
            fixed = " (repaired)" if p.repaired else ""
            print(f"{p.stream}: {p.kind}: {p.path}: {p.detail}{fixed}")
    if any(not p.repaired for p in problems):
        raise typer.Exit(8)
