"""How the command line shows things: JSON Lines for programs, Rich tables for people.

Rich is imported only when a table is drawn for a person, never on the enqueue/dequeue paths.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..message import Lease, Message, StreamStats, utc_from_ns
from ..text import one_line

if TYPE_CHECKING:
    from rich.console import Console

_COMPACT = (",", ":")


def iso(moment: Any) -> str | None:
    if moment is None:
        return None
    return str(moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def message_line(m: Message) -> str:
    """One message as one JSON object on one line; data is embedded as it was enqueued."""
    head: dict[str, Any] = {
        "id": m.id,
        "receipt": m.receipt,
        "stream": m.stream,
        "attempts": m.attempts,
        "enqueued_at": iso(m.enqueued_at),
        "visible_until": iso(m.visible_until),
    }
    if m.state is not None:
        head["state"] = m.state
    if m.group is not None:
        head["group"] = m.group
    if m.metadata:
        head["metadata"] = m.metadata
    data = m.data_json
    if "\n" in data or "\r" in data:  # pretty-printed input: one line is what JSON Lines needs
        data = json.dumps(m.data, separators=_COMPACT)
    return json.dumps(head, separators=_COMPACT)[:-1] + ',"data":' + data + "}"


def stats_record(s: StreamStats) -> dict[str, Any]:
    age = None if s.oldest_age is None else round(s.oldest_age, 3)
    return {
        "stream": s.stream,
        "ready": s.ready,
        "delayed": s.delayed,
        "inflight": s.inflight,
        "dlq": s.dlq,
        "oldest_age": age,
    }


PROGRESS_FROM = 500  # messages: fewer go by too fast to need a bar


@contextmanager
def progress_bar(what: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for a long operation at a terminal; None elsewhere."""
    if total < PROGRESS_FROM or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done: bar.advance(task, done)


def for_people() -> bool:
    """Draw tables and colour only for a person at a terminal."""
    return sys.stdout.isatty()


def console() -> Console:
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


STATS_COLUMNS = ("stream", "ready", "delayed", "inflight", "dlq", "oldest")


def stats_rows(all_stats: Sequence[StreamStats]) -> list[tuple[str, ...]]:
    return [
        (
            s.stream,
            str(s.ready),
            str(s.delayed),
            str(s.inflight),
            str(s.dlq),
            age_text(s.oldest_age),
        )
        for s in all_stats
    ]


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Stable, aligned text for pipes: a header line, then one line per row."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [columns, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on stdout: drawn for a person at a terminal, plain and stable for a pipe."""
    if for_people():
        console().print(rich_table(None, columns, rows))
    else:
        print(plain_table(columns, rows))


def rich_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def dead_letter_rows(dead: Sequence[Message]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for m in dead:
        info = m.metadata.get("dead")
        info = info if isinstance(info, dict) else {}
        error = str(info.get("error", ""))
        if "dlq_error" in info:
            error += f" | dead-letter handler: {info['dlq_error']}"
        state = m.state or "ready"
        if m.visible_until is not None and state != "ready":
            state += f" until {iso(m.visible_until)}"
        rows.append((m.id, str(m.attempts), state, str(info.get("died_at", "")), one_line(error)))
    return rows


DEAD_COLUMNS = ("id", "attempts", "state", "died_at", "error")


LEASE_COLUMNS = ("id", "attempt", "leased_at", "deadline", "holder")


def lease_record(lease: Lease) -> dict[str, Any]:
    holder = None
    if lease.holder is not None:
        holder = dict(lease.holder)
        holder["started_at"] = iso(utc_from_ns(holder["started_at"]))
    return {
        "id": lease.id,
        "stream": lease.stream,
        "dlq": lease.dlq,
        "attempts": lease.attempts,
        "leased_at": iso(lease.leased_at),
        "deadline": iso(lease.deadline),
        "holder": holder,
    }


def lease_rows(found: Sequence[Lease]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for lease in found:
        holder = "-"
        if lease.holder is not None:
            h = lease.holder
            holder = one_line(f"{h['host']} pid {h['pid']}: {h['worker']}")
        ident = f"dlq:{lease.id}" if lease.dlq else lease.id
        rows.append(
            (
                ident,
                str(lease.attempts),
                iso(lease.leased_at) or "-",
                iso(lease.deadline) or "-",
                holder,
            )
        )
    return rows
