"""What every command shares: the root's settings, the Queue they open, and the parameters
defined once (with their shell completion)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from .. import durations
from ..queue import Queue


class Settings:
    """The root options, and the one Queue a command uses."""

    def __init__(self, home: Path | None, url: str | None, fsync: bool) -> None:
        self.home = home
        self.url = url
        self.fsync = fsync
        self._queue: Queue | None = None

    def queue(self) -> Queue:
        if self._queue is None:
            # One-shot commands: a lease outlives the process (`ephq dequeue` hands its receipt
            # to whoever acks). The worker announces its leases itself.
            if self.url is not None:
                self._queue = Queue(url=self.url, keep_leases=False)
            else:
                self._queue = Queue(self.home, fsync=self.fsync, keep_leases=False)
        return self._queue


def settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def seconds(text: str | None, option: str) -> float | None:
    return None if text is None else durations.parse(text, option)


# -- shell completion: what is in the store, read quietly (a broken store completes nothing) -----


def _completion_queue(ctx: typer.Context) -> Queue:
    params = ctx.find_root().params
    if params.get("url"):
        return Queue(url=params["url"])
    return Queue(params.get("home"))


def complete_stream(ctx: typer.Context, incomplete: str) -> Iterator[str]:
    try:
        names = _completion_queue(ctx).streams()
    except Exception:
        return
    yield from (name for name in names if name.startswith(incomplete))


def complete_dead_letter(ctx: typer.Context, incomplete: str) -> Iterator[str]:
    stream = ctx.params.get("stream")
    if not stream:
        return
    try:
        dead = _completion_queue(ctx).dead_letters(stream, 1000)
    except Exception:
        return
    yield from (m.id for m in dead if m.id.startswith(incomplete))


# -- parameters used by several commands, defined once -------------------------------------

Stream = Annotated[
    str,
    typer.Argument(
        metavar="STREAM",
        help="The stream's name: letters, digits, '.', '_', '-'.",
        autocompletion=complete_stream,
    ),
]
AnyStream = Annotated[
    str | None,
    typer.Argument(
        metavar="[STREAM]", help="One stream; default: all.", autocompletion=complete_stream
    ),
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
    list[str] | None,
    typer.Argument(
        metavar="[ID...]",
        help="Dead letters' ids; default: all.",
        autocompletion=complete_dead_letter,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line, for programs.")]
DeadLetters = Annotated[
    bool, typer.Option("--dlq", help="Work on the stream's dead letters instead.")
]
