"""The `ephq` command tree. Each command is a thin shell over the Queue API: no queue logic here.

Output contract: ids, messages and stats are printed for programs (one id, or one JSON object,
per line); tables and colour appear only on a terminal. Errors are one line on stderr with the
exit codes in EXIT_CODES, printed by main.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import durations
from ..errors import BadInput, InvalidJSON, LeaseLost
from ..files.names import check_stream_name
from ..message import StreamStats
from ..queue import Queue
from . import render

EXIT_CODES = """\
Exit status: 0 success; 1 nothing to dequeue or peek at (stdout stays empty); 2 usage error or
bad input (nothing was written); 3 the receipt's lease is lost; 4 not found (a dead letter's
id); 5 permission denied; 6 disk full; 7 other storage failure; 8 check found problems it did
not repair; 9 the worker's handler cannot be run (the shell's exit 126 or 127); 130 interrupted."""


# -- parameters used by several commands, defined once -------------------------------------

Stream = Annotated[
    str,
    typer.Argument(metavar="STREAM", help="The stream's name: letters, digits, '.', '_', '-'."),
]
Receipt = Annotated[str, typer.Argument(metavar="RECEIPT", help="The receipt printed by dequeue.")]
Visibility = Annotated[
    str | None,
    typer.Option(
        "--visibility",
        "-v",
        metavar="D",
        help="How long the lease hides the message (250ms, 30s, 5m, 1h, 1d). "
        "Default: the stream's setting (30s unless configured).",
    ),
]
Delay = Annotated[
    str, typer.Option("--delay", "-d", metavar="D", help="Keep it invisible this long first.")
]
DeadLetterIds = Annotated[
    list[str] | None, typer.Argument(metavar="[ID...]", help="Dead letters' ids; default: all.")
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line, for programs.")]
DeadLetters = Annotated[
    bool, typer.Option("--dlq", help="Work on the stream's dead letters instead.")
]


class Settings:
    """The root options, and the one Queue a command uses."""

    def __init__(self, home: Path | None, fsync: bool) -> None:
        self.home = home
        self.fsync = fsync
        self._queue: Queue | None = None

    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue(self.home, fsync=self.fsync)
        return self._queue


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def _seconds(text: str | None, option: str) -> float | None:
    return None if text is None else durations.parse(text, option)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # only here: it costs start-up

        print(f"ephq {version('ephq')}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="EPHQ_HOME",
            metavar="DIR",
            help="Where the streams live. Default: the user data directory (~/.local/share/ephq).",
        ),
    ] = None,
    no_fsync: Annotated[
        bool,
        typer.Option(
            "--no-fsync",
            envvar="EPHQ_NO_FSYNC",
            help="Do not flush enqueues to disk: faster, but a power loss may lose recent ones.",
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="EPHQ_DEBUG", help="Show a traceback on errors."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print ephq's version and exit.",
        ),
    ] = False,
) -> None:
    del debug, version  # read by main() before the command runs; printed by its callback
    ctx.obj = Settings(home, fsync=not no_fsync)


# -- produce -------------------------------------------------------------------------------


def _read_input(file: str | None) -> tuple[bytes, str]:
    if file is None or file == "-":
        return sys.stdin.buffer.read(), "stdin"
    try:
        return Path(file).read_bytes(), file
    except FileNotFoundError:
        raise BadInput(f"{file}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{file}: is a directory, not a file of JSON") from None
    except PermissionError:
        raise BadInput(f"{file}: permission denied") from None


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
            help="JSON Lines: one message per non-empty line, all enqueued or none.",
        ),
    ] = False,
) -> None:
    """Add a message (or, with --lines, many) to STREAM and print each new id on its own line."""
    check_stream_name(stream)
    delay_s = durations.parse(delay, "--delay")
    raw, source = _read_input(file)
    q = _settings(ctx).queue()
    if not lines:
        try:
            ids = [q.enqueue_json(stream, raw, delay_s)]
        except InvalidJSON as exc:
            raise _located(exc, source) from None
    else:
        texts = _json_lines(raw, source)
        with render.progress_bar("enqueuing", len(texts)) as progress:
            ids = q.enqueue_many_json(stream, texts, delay_s, progress=progress)
    sys.stdout.write("".join(i + "\n" for i in ids))


def _json_lines(raw: bytes, source: str) -> list[str]:
    from ..queue import checked_json

    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise BadInput(f"{source}: not UTF-8 text: {exc}") from None
    texts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(checked_json(line))
        except InvalidJSON as exc:
            raise _located(exc, source, line_offset=number) from None
    if not texts:
        raise BadInput(f"{source}: no messages: every line is empty")
    return texts


# -- consume -------------------------------------------------------------------------------


def dequeue(
    ctx: typer.Context,
    stream: Stream,
    visibility: Visibility = None,
    wait: Annotated[
        str,
        typer.Option("--wait", "-w", metavar="D", help="Wait up to D for a message to arrive."),
    ] = "0",
    max_messages: Annotated[
        int, typer.Option("--max", "-n", min=1, metavar="N", help="Lease up to N messages at once.")
    ] = 1,
    dlq: DeadLetters = False,
) -> None:
    """Lease the oldest visible messages of STREAM: one JSON object per message per line.

    Each has id, receipt, stream, attempts, enqueued_at, visible_until and data (the message
    as it was enqueued). Exit status 1, with nothing printed, if there was nothing to lease.
    """
    got = (
        _settings(ctx)
        .queue()
        .dequeue_many(
            stream,
            max_messages,
            _seconds(visibility, "--visibility"),
            durations.parse(wait, "--wait"),
            dlq=dlq,
        )
    )
    if not got:
        raise typer.Exit(1)
    sys.stdout.write("".join(render.message_line(m) + "\n" for m in got))


def ack(
    ctx: typer.Context,
    stream: Stream,
    receipts: Annotated[list[str], typer.Argument(metavar="RECEIPT...", help="Receipts to ack.")],
) -> None:
    """The work is done: remove the messages these receipts lease.

    Every receipt is tried; exit status 3 if any lease was already lost.
    """
    q = _settings(ctx).queue()
    for receipt in receipts:
        q.validate_receipt(receipt)
    lost: list[LeaseLost] = []
    for receipt in receipts:
        try:
            q.ack(stream, receipt)
        except LeaseLost as exc:
            lost.append(exc)
    for error in lost[:-1]:
        print(f"ephq: {error}", file=sys.stderr)
    if lost:
        raise lost[-1]


def nack(
    ctx: typer.Context,
    stream: Stream,
    receipt: Receipt,
    delay: Annotated[
        str, typer.Option("--delay", "-d", metavar="D", help="Redeliver after D (default: now).")
    ] = "0",
    reason: Annotated[
        str | None,
        typer.Option("--reason", "-r", help="Why it failed: kept if this makes it a dead letter."),
    ] = None,
) -> None:
    """The work failed: make the message visible again (in its place), or dead-letter it if
    this was its last attempt."""
    delay_s = durations.parse(delay, "--delay")
    _settings(ctx).queue().nack(stream, receipt, delay_s, reason)


def release(ctx: typer.Context, stream: Stream, receipt: Receipt) -> None:
    """Give the message back unprocessed: visible now, and this attempt does not count."""
    _settings(ctx).queue().release(stream, receipt)


def extend(
    ctx: typer.Context,
    stream: Stream,
    receipt: Receipt,
    duration: Annotated[
        str, typer.Argument(metavar="D", help="Keep the lease this long from now.")
    ],
) -> None:
    """Keep a lease for D from now (the receipt stays the same); prints the new deadline."""
    seconds = durations.parse(duration, "duration")
    until = _settings(ctx).queue().extend(stream, receipt, seconds)
    print(render.iso(until))


# -- look ----------------------------------------------------------------------------------


def peek(
    ctx: typer.Context,
    stream: Stream,
    max_messages: Annotated[
        int, typer.Option("--max", "-n", min=1, metavar="N", help="Show up to N.")
    ] = 10,
    dlq: DeadLetters = False,
) -> None:
    """Show the next visible messages without leasing them (receipt is null)."""
    got = _settings(ctx).queue().peek(stream, max_messages, dlq=dlq)
    if not got:
        raise typer.Exit(1)
    sys.stdout.write("".join(render.message_line(m) + "\n" for m in got))


def stats(
    ctx: typer.Context,
    stream: Annotated[str | None, typer.Argument(help="One stream; default: all.")] = None,
    as_json: AsJson = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw every second until interrupted.")
    ] = False,
) -> None:
    """Count each stream's ready, delayed, inflight and dead messages, and the oldest's age."""
    q = _settings(ctx).queue()

    def collect() -> list[StreamStats]:
        return [q.stats(stream)] if stream is not None else q.stats()

    if as_json:
        for s in collect():
            print(json.dumps(render.stats_record(s), separators=(",", ":")))
        return
    if watch and render.for_people():
        _watch_stats(collect)
        return
    rows = render.stats_rows(collect())
    if render.for_people():
        render.console().print(render.rich_table(None, render.STATS_COLUMNS, rows))
    else:
        print(render.plain_table(render.STATS_COLUMNS, rows))


def _watch_stats(collect: Callable[[], list[StreamStats]]) -> None:
    from rich.live import Live

    def table() -> Any:
        rows = render.stats_rows(collect())
        return render.rich_table(time.strftime("%H:%M:%S"), render.STATS_COLUMNS, rows)

    try:
        with Live(table(), console=render.console(), auto_refresh=False) as live:
            while True:
                time.sleep(1)
                live.update(table(), refresh=True)
    except KeyboardInterrupt:
        pass


def worker(
    ctx: typer.Context,
    stream: Stream,
    exec_: Annotated[
        str,
        typer.Option(
            "--exec",
            "-e",
            metavar="CMD",
            help="Run through /bin/sh -c for each message, data on stdin, EPHQ_* variables set. "
            "Exit 0 acks, 100 dead-letters now, 126 or 127 (cannot run) stops the worker, "
            "anything else retries with backoff.",
        ),
    ],
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-c", min=1, metavar="N", help="Handlers running at once."),
    ] = 1,
    visibility: Visibility = None,
    timeout: Annotated[
        str | None,
        typer.Option("--timeout", metavar="D", help="Stop a handler (and its children) after D."),
    ] = None,
    retry_delay: Annotated[
        str, typer.Option("--retry-delay", metavar="D", help="First retry's delay; doubles.")
    ] = "1s",
    max_retry_delay: Annotated[
        str, typer.Option("--max-retry-delay", metavar="D", help="Cap on the retry delay.")
    ] = "5m",
    drain: Annotated[
        bool,
        typer.Option("--drain", help="Exit once nothing is visible and no handler is running."),
    ] = False,
    max_messages: Annotated[
        int | None,
        typer.Option("--max-messages", min=1, metavar="N", help="Exit after handling N."),
    ] = None,
    dlq: DeadLetters = False,
    grace: Annotated[
        str,
        typer.Option(
            "--grace", metavar="D", help="On SIGTERM or SIGINT, let handlers finish within D."
        ),
    ] = "30s",
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Log one JSON object per message.")
    ] = False,
) -> None:
    """Run a command for every message of STREAM, under cron, systemd or a shell loop.

    Leases up to --concurrency messages, extends each lease while its handler runs, and settles
    each by the handler's exit status. SIGTERM or SIGINT stops leasing, lets running handlers
    finish within --grace, then stops them and releases their messages (the attempt does not
    count); a second SIGINT stops at once. One log line per message on stderr, a summary at exit.
    """
    from ..worker import shell

    settings = _settings(ctx)
    q = settings.queue()
    check_stream_name(stream)
    lease = _seconds(visibility, "--visibility")
    code = shell.run(
        q,
        stream,
        exec_,
        timeout=_seconds(timeout, "--timeout"),
        json_logs=json_logs,
        concurrency=concurrency,
        visibility=lease if lease is not None else q.config(stream).visibility,
        retry_delay=durations.parse(retry_delay, "--retry-delay"),
        max_retry_delay=durations.parse(max_retry_delay, "--max-retry-delay"),
        drain=drain,
        max_messages=max_messages,
        dlq=dlq,
        grace=durations.parse(grace, "--grace"),
    )
    raise typer.Exit(code)


# -- manage --------------------------------------------------------------------------------


def config(
    ctx: typer.Context,
    stream: Stream,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            metavar="N",
            help="Deliveries before a message is dead-lettered.",
        ),
    ] = None,
    visibility: Annotated[
        str | None,
        typer.Option("--visibility", "-v", metavar="D", help="Default lease length."),
    ] = None,
) -> None:
    """Show STREAM's settings, or change them (they are kept with the stream)."""
    q = _settings(ctx).queue()
    if max_attempts is None and visibility is None:
        settings = q.config(stream)
    else:
        settings = q.configure(stream, max_attempts, _seconds(visibility, "--visibility"))
    record = {
        "stream": stream,
        "max_attempts": settings.max_attempts,
        "visibility": settings.visibility,
    }
    print(json.dumps(record, separators=(",", ":")))


def purge(
    ctx: typer.Context,
    stream: Stream,
    yes: Annotated[bool, typer.Option("--yes", help="Yes, delete every message.")] = False,
) -> None:
    """Delete every message of STREAM (not its dead letters); prints how many."""
    if not yes:
        raise BadInput(f"purge deletes every message of {stream!r}: add --yes to do it")
    print(_settings(ctx).queue().purge(stream))


def check(
    ctx: typer.Context,
    stream: Annotated[str | None, typer.Argument(help="One stream; default: all.")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what can be fixed; quarantine what is not ephq's.")
    ] = False,
) -> None:
    """Verify the store: every message in one state, every file readable, no stale leftovers.

    Prints one line per problem, and one per entry of the quarantine (where repair and consumers
    set aside what is not ephq's, byte for byte); exit status 8 if a problem is left unrepaired.
    """
    problems = _settings(ctx).queue().check(stream, repair=repair)
    for p in problems:
        fixed = " (repaired)" if p.repaired else ""
        print(f"{p.stream}: {p.kind}: {p.path}: {p.detail}{fixed}")
    if any(not p.repaired for p in problems):
        raise typer.Exit(8)


# -- dead letters --------------------------------------------------------------------------


def dlq_list(
    ctx: typer.Context,
    stream: Stream,
    as_json: AsJson = False,
    max_messages: Annotated[
        int, typer.Option("--max", "-n", min=1, metavar="N", help="Show up to N.")
    ] = 100,
) -> None:
    """List dead letters, oldest first: id, attempts, time of death and last error."""
    dead = _settings(ctx).queue().dead_letters(stream, max_messages)
    if as_json:
        sys.stdout.write("".join(render.message_line(m) + "\n" for m in dead))
        return
    rows = render.dead_letter_rows(dead)
    if render.for_people():
        render.console().print(render.rich_table(None, render.DEAD_COLUMNS, rows))
    else:
        print(render.plain_table(render.DEAD_COLUMNS, rows))


def dlq_show(
    ctx: typer.Context,
    stream: Stream,
    message_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's id.")],
) -> None:
    """Print one dead letter as a JSON object, with its data and why it died."""
    print(render.message_line(_settings(ctx).queue().dead_letter(stream, message_id)))


def dlq_redrive(
    ctx: typer.Context,
    stream: Stream,
    ids: DeadLetterIds = None,
) -> None:
    """Put dead letters back in STREAM with fresh attempts; prints the ids moved."""
    q = _settings(ctx).queue()
    total = len(ids) if ids else q.stats(stream).dlq
    with render.progress_bar("redriving", total) as progress:
        moved = q.redrive(stream, ids or None, progress=progress)
    sys.stdout.write("".join(i + "\n" for i in moved))


def dlq_purge(
    ctx: typer.Context,
    stream: Stream,
    ids: DeadLetterIds = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Yes, delete every dead letter (when no ID is given).")
    ] = False,
) -> None:
    """Delete dead letters for good (those named, or with --yes all); prints the ids deleted."""
    if not ids and not yes:
        raise BadInput(
            f"dlq purge without ids deletes every dead letter of {stream!r}: add --yes to do it"
        )
    removed = _settings(ctx).queue().purge_dead_letters(stream, ids or None)
    sys.stdout.write("".join(i + "\n" for i in removed))


# -- the tree ------------------------------------------------------------------------------

COMMANDS: dict[str, Callable[..., None]] = {
    "enqueue": enqueue,
    "dequeue": dequeue,
    "ack": ack,
    "nack": nack,
    "release": release,
    "extend": extend,
    "peek": peek,
    "stats": stats,
    "config": config,
    "purge": purge,
    "check": check,
    "worker": worker,
}
DLQ_COMMANDS: dict[str, Callable[..., None]] = {
    "list": dlq_list,
    "show": dlq_show,
    "redrive": dlq_redrive,
    "purge": dlq_purge,
}
GROUPS = {"dlq": "Inspect, redrive and purge a stream's dead letters."}


def build(only: str | None = None) -> typer.Typer:
    """The command tree; with only, just that command (or group) under the root.

    Typer converts every command's parameters each time a tree is built, which costs
    milliseconds per run of a command that scripts call in loops; building only the command
    being run keeps that off the hot path. Help and man pages use the whole tree.
    """
    app = typer.Typer(
        name="ephq",
        help="A durable local message queue on plain files: enqueue jobs from scripts, consume "
        "them with leases, acks and dead letters. No broker.",
        epilog=EXIT_CODES,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    for name, command in COMMANDS.items():
        if only in (None, name):
            app.command(name)(command)
    if only in (None, "dlq"):
        dlq = typer.Typer(help=GROUPS["dlq"], no_args_is_help=True, rich_markup_mode=None)
        for name, command in DLQ_COMMANDS.items():
            dlq.command(name)(command)
        app.add_typer(dlq, name="dlq")
    return app
