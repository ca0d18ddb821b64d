"""Looking without changing: `peek`, `stats` and `leases`."""

import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from .. import durations
from ..message import StreamStats
from . import render
from .params import AnyStream, AsJson, DeadLetters, Stream, settings


def peek(
    ctx: typer.Context,
    stream: Stream,
    max_messages: Annotated[
        int, typer.Option("--max", "-n", min=1, metavar="N", help="Show up to N.")
    ] = 10,
    dlq: DeadLetters = False,
) -> None:
    """Show the next visible messages without leasing them (receipt is null)."""
    got = settings(ctx).queue().peek(stream, max_messages, dlq=dlq)
    if not got:
        raise typer.Exit(1)
    sys.stdout.write("".join(render.message_line(m) + "\n" for m in got))


def stats(
    ctx: typer.Context,
    stream: AnyStream = None,
    as_json: AsJson = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Again every --interval until interrupted: a live table on a terminal, else "
            "one table (or with --json one JSON object per stream) per round.",
        ),
    ] = False,
    interval: Annotated[
        str, typer.Option("--interval", metavar="D", help="How often --watch looks.")
    ] = "1s",
) -> None:
    """Count each stream's ready, delayed, inflight and dead messages, and the oldest's age.

    Exit status 4 if the stream named is not there.
    """
    q = settings(ctx).queue()
    every = durations.parse(interval, "--interval")

    def collect() -> list[StreamStats]:
        return [q.stats(stream)] if stream is not None else q.stats()

    first = collect()  # a missing stream fails here, before any output
    if watch and not as_json and render.for_people():
        _watch_live(collect, first, every)
        return
    shown = first
    try:
        while True:
            _print_stats(shown, as_json, stamp=watch)
            if not watch:
                return
            time.sleep(max(every, 0.05))
            shown = collect()
    except KeyboardInterrupt:
        pass  # how a watch ends


def _print_stats(shown: list[StreamStats], as_json: bool, *, stamp: bool) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if as_json:
        extra: dict[str, Any] = {"time": now} if stamp else {}
        lines = [json.dumps(render.stats_record(s) | extra, separators=(",", ":")) for s in shown]
        sys.stdout.write("".join(line + "\n" for line in lines))
    else:
        rows = render.stats_rows(shown)
        if render.for_people():
            render.console().print(render.rich_table(None, render.STATS_COLUMNS, rows))
        else:
            header = f"# {now}\n" if stamp else ""
            print(header + render.plain_table(render.STATS_COLUMNS, rows) + ("\n" if stamp else ""))
    sys.stdout.flush()


def _watch_live(
    collect: Callable[[], list[StreamStats]], first: list[StreamStats], every: float
) -> None:
    from rich.live import Live

    def table(shown: list[StreamStats]) -> Any:
        rows = render.stats_rows(shown)
        return render.rich_table(time.strftime("%H:%M:%S"), render.STATS_COLUMNS, rows)

    try:
        with Live(table(first), console=render.console(), auto_refresh=False) as live:
            while True:
                time.sleep(max(every, 0.05))
                live.update(table(collect()), refresh=True)
    except KeyboardInterrupt:
        pass


def leases(ctx: typer.Context, stream: Stream, as_json: AsJson = False) -> None:
    """List STREAM's messages in flight (its dead letters' too), by deadline: id, attempt,
    when leased, the deadline, and the holder (host, pid, worker) when a worker holds it.

    Exit status 4 if the stream is not there.
    """
    found = settings(ctx).queue().leases(stream)
    if as_json:
        lines = [json.dumps(render.lease_record(lease), separators=(",", ":")) for lease in found]
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    rows = render.lease_rows(found)
    render.print_table(render.LEASE_COLUMNS, rows)
