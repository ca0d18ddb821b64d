"""`ephq worker`: run a command for every message (the loop is ephq.worker's)."""

from typing import Annotated

import typer

from .. import durations
from ..ids import check_stream_name
from ..worker.loop import MAX_CONCURRENCY
from .params import DeadLetters, Stream, Visibility, seconds, settings


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
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=MAX_CONCURRENCY,
            metavar="N",
            help="Handlers running at once.",
        ),
    ] = 1,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            metavar="N/UNIT",
            help="Start at most N handlers per second, minute or hour (10/s, 100/m, 1000/h), "
            "in bursts of up to N. Messages wait in the stream meanwhile, not leased.",
        ),
    ] = None,
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
    wait_retries: Annotated[
        str | None,
        typer.Option(
            "--wait-retries",
            metavar="D",
            help="With --drain: do not exit while a retry (or other delayed message) of the "
            "stream comes due within D; wait for it, so one run finishes what failed "
            "transiently.",
        ),
    ] = None,
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
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            metavar="HOST:PORT",
            help="Serve GET /metrics (Prometheus): the worker's counters, a histogram of "
            "handler durations and the stream's state.",
        ),
    ] = None,
) -> None:
    """Run a command for every message of STREAM, under cron, systemd or a shell loop.

    Leases up to --concurrency messages, extends each lease while its handler runs, and settles
    each by the handler's exit status. SIGTERM or SIGINT stops leasing, lets running handlers
    finish within --grace, then stops them and releases their messages (the attempt does not
    count); a second SIGINT stops at once. One log line per message on stderr, a summary at exit.
    """
    from .. import metrics
    from ..worker import shell
    from ..worker.rate import parse_rate

    q = settings(ctx).queue()
    check_stream_name(stream)
    if not exec_.strip():  # `--exec "$HANDLER"` with the variable unset, say
        raise typer.BadParameter(
            "the command is empty: every message would be acked without anything run",
            param_hint="--exec",
        )
    lease = seconds(visibility, "--visibility")
    stop_after = seconds(timeout, "--timeout")
    if stop_after == 0:  # every handler stopped as it starts, every message retried until dead
        raise typer.BadParameter(
            "a handler given no time is stopped at once", param_hint="--timeout"
        )
    limit = None if rate is None else parse_rate(rate, "--rate")
    if wait_retries is not None and not drain:
        raise typer.BadParameter("--wait-retries goes with --drain", param_hint="--wait-retries")
    address = (
        None
        if metrics_listen is None
        else metrics.parse_address(metrics_listen, "--metrics-listen")
    )
    code = shell.run(
        q,
        stream,
        exec_,
        timeout=stop_after,
        json_logs=json_logs,
        metrics_address=address,
        concurrency=concurrency,
        visibility=lease if lease is not None else q.config(stream).visibility,
        retry_delay=durations.parse(retry_delay, "--retry-delay"),
        max_retry_delay=durations.parse(max_retry_delay, "--max-retry-delay"),
        drain=drain,
        drain_retries=seconds(wait_retries, "--wait-retries"),
        max_messages=max_messages,
        dlq=dlq,
        grace=durations.parse(grace, "--grace"),
        rate=limit,
    )
    raise typer.Exit(code)
