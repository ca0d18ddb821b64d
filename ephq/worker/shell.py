"""`ephq worker`: the worker loop with a command as handler, signals, logs and a summary."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from ..queue import Queue
from .command import CommandHandler
from .loop import Outcome, Summary, Worker
from .stopping import INTERRUPTED, StopWatch

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
        if not json_logs and sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    def start(self) -> None:
        if self.console is not None:
            self.status = self.console.status(f"waiting for messages on {self.stream}")
            self.status.start()

    def outcome(self, o: Outcome, summary: Summary, running: int) -> None:
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
            self.console.print(line, markup=False)
            self.status.update(
                f"{self.stream}: {running} running, {summary.acked} acked, "
                f"{summary.retried} retried, {summary.dead_lettered} dead-lettered"
            )

    def _write(self, line: str) -> None:
        """One write per line, under a lock: handlers finish on several threads at once."""
        with self._lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

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


# Control characters as escapes, so that what a handler wrote (a stack trace, a segfault's
# second line) stays on its message's one log line; a backslash is doubled so that it can be
# told from them.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def one_line(text: str) -> str:
    return text.translate(_ESCAPES)


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
    **options: Any,
) -> int:
    assert queue.home is not None
    handler = CommandHandler(command, home=queue.home, timeout=timeout)
    log = Log(stream, json_logs)
    worker = Worker(queue, stream, handler, **options)
    worker.on_outcome = lambda o: log.outcome(o, worker.summary, worker.running)

    def overdue() -> None:
        log.overdue(worker.running)
        handler.kill_all()

    watch = StopWatch(lambda now: worker.stop(now=now), worker.grace, overdue)
    log.start()
    try:
        worker.run()
    finally:
        watch.close()
        log.finish(worker.summary)
    if worker.broken is not None:
        log.stopped(worker.broken)
        return HANDLER_BROKEN
    return INTERRUPTED if watch.interrupts >= 2 else 0
