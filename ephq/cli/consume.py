"""Consuming by hand: `dequeue`, then `ack`, `nack`, `release` or `extend` with its receipt."""

import contextlib
import itertools
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from .. import durations
from ..errors import BadInput, LeaseLost
from ..message import Message
from ..queue import Queue
from . import render
from .output import OutputFailed, discard
from .params import DeadLetters, Receipt, Stream, Visibility, seconds, settings
from .reading import MESSAGE_LINE_LIMIT, read_lines

Receipts = Annotated[
    list[str],
    typer.Argument(
        metavar="RECEIPT...|-",
        help="Receipts printed by dequeue; '-' reads them from stdin, one per line (a line of "
        "dequeue's JSON output works too).",
    ),
]


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
    as it was enqueued). Exit status 1, with nothing printed, if there was nothing to lease;
    also when the reader of a pipe on stdout has left before a line was written whole. What
    could not be written is given back; a stdout that cannot be written otherwise (closed, a
    full disk) is exit status 7.
    """
    q = settings(ctx).queue()
    got = q.dequeue_many(
        stream,
        max_messages,
        seconds(visibility, "--visibility"),
        durations.parse(wait, "--wait"),
        dlq=dlq,
    )
    if not got or not _deliver(q, stream, got):
        raise typer.Exit(1)


def _deliver(q: Queue, stream: str, got: list[Message]) -> bool:
    """Write the messages' lines to stdout; whether any was written whole.

    A message whose line could not be written whole (the reader of a pipe is gone, the disk
    of a redirection is full) was delivered to nobody: it is given back at once, uncounted,
    instead of waiting for its lease to run out. A line written whole may have been read: its
    lease stands.
    """
    lines = [(render.message_line(m) + "\n").encode() for m in got]
    data = b"".join(lines)
    sys.stdout.flush()
    written = 0
    try:
        fd = sys.stdout.fileno()
        while written < len(data):
            written += os.write(fd, data[written:])
        return True
    except OSError as exc:
        whole = 0
        for end in itertools.accumulate(len(line) for line in lines):
            if end > written:
                break
            whole += 1
        for m in got[whole:]:
            with contextlib.suppress(LeaseLost):
                q.release(stream, m.receipt or "")
        back = len(got) - whole
        what = (
            f"cannot write to stdout ({exc.strerror or exc}): {back} leased "
            f"message{'s' if back != 1 else ''} given back, visible again"
        )
        if not isinstance(exc, BrokenPipeError):
            # Not a reader that left (a pipeline's race, exit 1: nothing delivered) but a
            # stdout that cannot be written: exit 7, as for every command, and never 0 or 1,
            # which a script would take for done or for an empty queue.
            raise OutputFailed(what) from None
        print(f"ephq: {what}", file=sys.stderr)
        discard(sys.stdout)  # nothing more reaches the reader
        return whole > 0


def ack(ctx: typer.Context, stream: Stream, receipts: Receipts) -> None:
    """The work is done: remove the messages these receipts lease.

    Every receipt is tried; exit status 3 if any lease was already lost.
    """
    q = settings(ctx).queue()
    lost = q.ack_many(stream, _receipts(receipts))  # checks all first; one statement on PG
    # What was lost is acked again one by one, which says why for each, as ack of one does.
    _settle_each(q, lost, lambda receipt: q.ack(stream, receipt))


def nack(
    ctx: typer.Context,
    stream: Stream,
    receipts: Receipts,
    delay: Annotated[
        str, typer.Option("--delay", "-d", metavar="D", help="Redeliver after D (default: now).")
    ] = "0",
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            "-r",
            metavar="TEXT",
            help="Why it failed: kept if this makes it a dead letter (and by a dead letter).",
        ),
    ] = None,
) -> None:
    """The work failed: make the messages visible again (in their place), or dead-letter each
    whose last attempt this was."""
    delay_s = durations.parse(delay, "--delay")
    q = settings(ctx).queue()
    _settle_each(q, receipts, lambda receipt: q.nack(stream, receipt, delay_s, reason))


def release(ctx: typer.Context, stream: Stream, receipts: Receipts) -> None:
    """Give the messages back unprocessed: visible now, and this attempt does not count."""
    q = settings(ctx).queue()
    _settle_each(q, receipts, lambda receipt: q.release(stream, receipt))


def extend(
    ctx: typer.Context,
    stream: Stream,
    receipt: Receipt,
    duration: Annotated[
        str, typer.Argument(metavar="D", help="Keep the lease this long from now.")
    ],
) -> None:
    """Keep a lease for D from now (the receipt stays the same); prints the new deadline."""
    length = durations.parse(duration, "duration")
    until = settings(ctx).queue().extend(stream, receipt, length)
    print(render.iso(until))


def _settle_each(q: Queue, given: list[str], settle: Callable[[str], None]) -> None:
    """Settle every receipt (from stdin for '-'), all checked before any is used; LeaseLost for
    the last one lost, after a line for each of the others."""
    receipts = _receipts(given)
    for receipt in receipts:
        q.validate_receipt(receipt)
    lost: list[LeaseLost] = []
    for receipt in receipts:
        try:
            settle(receipt)
        except LeaseLost as exc:
            lost.append(exc)
    for error in lost[:-1]:
        print(f"ephq: {error}", file=sys.stderr)
    if lost:
        raise lost[-1]


def _receipts(given: list[str]) -> list[str]:
    if "-" not in given:
        return given
    if given != ["-"]:
        raise BadInput("give receipts as arguments or '-' for stdin, not both")
    receipts = []
    # Receipts, or lines of dequeue's output (a message each): read as export's lines are.
    lines, _ = read_lines(None, MESSAGE_LINE_LIMIT, "more than a line of dequeue's output")
    for number, line in lines:
        receipt = line.strip()
        if not receipt:  # (only other white space than JSON's)
            continue
        if receipt.startswith("{"):  # a line of dequeue's output: its receipt
            try:
                found = json.loads(receipt).get("receipt")
            except (ValueError, AttributeError):
                found = None
            if not isinstance(found, str):
                raise BadInput(f"stdin, line {number}: a JSON object without a receipt")
            receipt = found
        receipts.append(receipt)
    if not receipts:
        raise BadInput("stdin held no receipts")
    return receipts
