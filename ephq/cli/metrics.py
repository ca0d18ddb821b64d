"""`ephq metrics`: every stream's state in the Prometheus text format, printed, written for
node_exporter's textfile collector, or served over HTTP."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import metrics
from ..errors import BadInput
from ..files.fsio import storage_error
from ..queue import Queue
from .params import AnyStream, settings


def metrics_command(
    ctx: typer.Context,
    stream: AnyStream = None,
    textfile: Annotated[
        Path | None,
        typer.Option(
            "--textfile",
            metavar="PATH",
            help="Write to PATH atomically (for node_exporter's textfile collector: a name "
            "ending in .prom) instead of printing.",
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="Serve GET /metrics on HOST:PORT until interrupted, reading the store at "
            "each scrape.",
        ),
    ] = None,
) -> None:
    """Print the state of every stream (or one) in the Prometheus text format.

    ephq_messages{stream,state} (gauge; state ready, delayed, inflight or dead) and
    ephq_oldest_message_age_seconds{stream} (gauge; the age of the oldest ready message, 0 when
    none is: the processing lag). A worker started with --metrics-listen serves these for its
    stream and its own: ephq_worker_messages_total{stream,outcome} (counter; outcome acked,
    retried, dead_lettered, released or lease_lost), ephq_worker_handler_duration_seconds
    {stream,outcome} (histogram), ephq_worker_handlers_running, ephq_worker_concurrency and
    ephq_worker_start_time_seconds (gauges).
    """
    q = settings(ctx).queue()
    if textfile is not None and listen is not None:
        raise BadInput("give --textfile or --listen, not both")
    if listen is not None:
        address = metrics.parse_address(listen, "--listen")
        _serve(address, lambda: _render(q, stream))
        return
    body = _render(q, stream)
    if textfile is None:
        sys.stdout.write(body)
    else:
        write_atomically(textfile, body)


def _render(q: Queue, stream: str | None) -> str:
    found = [q.stats(stream)] if stream is not None else q.stats()
    return metrics.text(metrics.queue_metrics(found))


def write_atomically(path: Path, body: str) -> None:
    """Write a whole file under path's name at once (a temporary file renamed over it): a
    collector reading it never sees half."""
    import tempfile

    directory = path.parent
    doing = f"write --textfile {path}"
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:
        raise BadInput(f"--textfile {path}: no directory {directory}") from None
    except PermissionError:
        raise BadInput(f"--textfile {path}: cannot write in {directory}") from None
    except OSError as exc:  # no inode left, say: one line, exit 6 or 7
        raise storage_error(exc, doing) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.chmod(tmp, 0o644)  # node_exporter usually runs as another user
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: the old file stays as it was
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(exc, doing) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _serve(address: tuple[str, int], render: metrics.Render) -> None:
    try:
        server = metrics.serve(address, render)
    except OSError as exc:
        raise BadInput(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from None
    print(
        f"ephq metrics: serving http://{address[0]}:{server.server_address[1]}/metrics",
        file=sys.stderr,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
