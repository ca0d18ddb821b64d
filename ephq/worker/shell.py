"""`ephq worker`: the worker loop with a command as handler, signals, logs and a summary."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..errors import BadInput, NotFound
from ..metrics import WorkerMetrics
from ..queue import Queue
from ..text import one_line
from .command import CommandHandler
from .loop import Worker
from .settling import Outcome, Summary
from .stopping import INTERRUPTED, StopWatch

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

# The worker stopped because its handler cannot run (the shell's exit 126 or 127).
HANDLER_BROKEN = 9


class Log:
    """One line per message on stderr (text or JSON), and a live status line on a terminal."""

    def __init__(self, stream: str, json_logs: bool) -> None:
        self.stream = stream
        self.json_logs = json_logs
        self.console: Any = None
        self.status: Any = None
        self._lock = threading.Lock()
        self.lost = False  # stderr could not be written: nothing more is logged
        if not json_logs and sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    def start(self) -> None:
        if self.console is not None:
            self.status = self.console.status(f"{self.stream}: waiting for messages")
            self.status.start()

    def refresh(self, worker: Worker, grace: float) -> None:
        """Redraw the terminal's status line from what the worker is doing now."""
        if self.status is None:
            return
        s, running = worker.summary, worker.running
        done = (
            f"{s.acked} acked, {s.retried} retried, {s.dead_lettered} dead-lettered, "
            f"{s.released} released"
        )
        if worker.stopping:
            doing = (
                f"stopping: {running} handler(s) finishing, up to {grace:g}s "
                "(Ctrl-C again stops them now)"
                if running
                else "stopping"
            )
        elif worker.rate_limited:
            doing = f"{running} running, waiting for --rate" if running else "waiting for --rate"
        elif running:
            doing = f"{running} running"
        else:
            doing = "waiting for messages"
        with self._lock:
            self.status.update(f"{self.stream}: {doing} · {done}")

    def outcome(self, o: Outcome) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.json_logs:
            record = {
                "ts": stamp,
                "stream": self.stream,
                "id": o.message.id,
                "attempt": o.message.attempts,
                "outcome": o.result,
                "seconds": round(o.seconds, 3),
                "retry_in": o.retry_in,
                "detail": o.detail or None,
            }
            self._write(json.dumps(record, separators=(",", ":")))
            return
        outcome = o.result if o.retry_in is None else f"retry in {o.retry_in:g}s"
        detail = f": {one_line(o.detail)}" if o.detail and o.result != "acked" else ""
        line = (
            f"{stamp} {self.stream} {o.message.id} attempt={o.message.attempts} "
            f"{outcome} {o.seconds:.3f}s{detail}"
        )
        if self.console is None:
            self._write(line)
            return
        with self._lock:
            if not self.lost:
                try:
                    self.console.print(line, markup=False)
                except OSError:
                    self.lost = True

    def _write(self, line: str) -> None:
        """One write per line, under a lock: handlers finish on several threads at once.

        Logging is the worker's report, not its work: once stderr cannot be written (a pipe
        whose reader left, a full disk), lines are dropped and the messages go on being handled
        and settled; the exit status still says how the worker ended."""
        with self._lock:
            if self.lost:
                return
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except OSError:
                self.lost = True

    def notice(self, text: str) -> None:
        if self.json_logs:
            record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "notice": text}
            self._write(json.dumps(record, separators=(",", ":")))
        else:
            self._write(f"ephq worker: {one_line(text)}")

    def stopped(self, why: str) -> None:
        self._write(f"ephq worker: stopped: {one_line(why)}; messages were given back uncounted")

    def overdue(self, running: int) -> None:
        self._write(
            "ephq worker: not stopped within --grace; exiting now "
            f"({running} handlers stopped: their messages will be delivered again)"
        )

    def finish(self, summary: Summary) -> None:
        if self.status is not None:
            self.status.stop()
        if self.json_logs:
            record = {"summary": summary.__dict__, "stream": self.stream}
            self._write(json.dumps(record, separators=(",", ":")))
        else:
            self._write(f"ephq worker: {totals(summary)}")


def totals(s: Summary) -> str:
    return (
        f"handled {s.handled} (acked {s.acked}, retried {s.retried}, "
        f"dead-lettered {s.dead_lettered}, released {s.released}, lease lost {s.lost})"
    )


def run(
    queue: Queue,
    stream: str,
    command: str,
    *,
    timeout: float | None,
    json_logs: bool,
    metrics_address: tuple[str, int] | None = None,
    **options: Any,
) -> int:
    handler = CommandHandler(command, store=queue.store_environment(), timeout=timeout)
    log = Log(stream, json_logs)
    worker = Worker(queue, stream, handler, name=command, **options)
    handler.expect_concurrency(worker.concurrency)
    counters = WorkerMetrics(stream, worker.concurrency)
    server = None if metrics_address is None else _serve_metrics(metrics_address, worker, counters)

    def settled(o: Outcome) -> None:
        counters.observe(_OUTCOME_METRIC[o.result], o.seconds)
        log.outcome(o)

    worker.on_outcome = settled
    worker.on_notice = log.notice
    handler.on_notice = log.notice

    def overdue() -> None:
        log.overdue(worker.running)
        handler.kill_all()

    watch = StopWatch(lambda now: worker.stop(now=now), worker.grace, overdue)
    log.start()
    ticking = threading.Event()
    if log.status is not None:
        threading.Thread(
            target=_tick, args=(log, worker, ticking), name="ephq-status", daemon=True
        ).start()
    try:
        worker.run()
    finally:
        handler.close()
        ticking.set()
        watch.close()
        log.finish(worker.summary)
        if server is not None:
            server.shutdown()
            server.server_close()
    if worker.broken is not None:
        log.stopped(worker.broken)
        return HANDLER_BROKEN
    return INTERRUPTED if watch.interrupts >= 2 else 0


_OUTCOME_METRIC = {
    "acked": "acked",
    "retry": "retried",
    "dead-lettered": "dead_lettered",
    "released": "released",
    "lease-lost": "lease_lost",
}


def _tick(log: Log, worker: Worker, done: threading.Event) -> None:
    while not done.wait(0.2):
        log.refresh(worker, worker.grace)


def _serve_metrics(
    address: tuple[str, int], worker: Worker, counters: WorkerMetrics
) -> ThreadingHTTPServer:
    def render() -> str:
        counters.running = worker.running
        try:
            state = metrics.queue_metrics([worker.queue.stats(worker.stream)])
        except NotFound:  # no message yet: the stream is not there
            state = []
        return metrics.text(state + counters.lines())

    try:
        server = metrics.serve(address, render)
    except OSError as exc:
        raise BadInput(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from None
    threading.Thread(target=server.serve_forever, name="ephq-metrics", daemon=True).start()
    return server
