"""Metrics in the Prometheus text format: the queue's state, and a worker's counters.

Names follow the Prometheus conventions (base units, `_total` counters, `_seconds`) and what
queue exporters publish (a gauge of messages per state, the age of the oldest):

    ephq_messages{stream, state}                 gauge: ready, delayed, inflight, dead
    ephq_oldest_message_age_seconds{stream}      gauge: age of the oldest ready message (0: none)
    ephq_worker_messages_total{stream, outcome}  counter: acked, retried, dead_lettered,
                                                 released, lease_lost
    ephq_worker_handler_duration_seconds{stream, outcome}   histogram of handler run times
    ephq_worker_handlers_running{stream}         gauge
    ephq_worker_concurrency{stream}              gauge: the most handlers at once
    ephq_worker_start_time_seconds{stream}       gauge: when the worker started (Unix time)

Exposition only: no dependency on prometheus_client, whose registry and process collectors a
command that prints once and exits does not need.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .message import StreamStats

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("acked", "retried", "dead_lettered", "released", "lease_lost")
# Handler durations: from a no-op shell command (milliseconds) to a long job (ten minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def queue_metrics(all_stats: Iterable[StreamStats]) -> list[str]:
    """The queue's gauges for these streams, with their HELP and TYPE lines."""
    shown = list(all_stats)
    lines = [
        "# HELP ephq_messages Messages in each state (dead: in the dead-letter queue).",
        "# TYPE ephq_messages gauge",
    ]
    for s in shown:
        stream = label_value(s.stream)
        for state, count in (
            ("ready", s.ready),
            ("delayed", s.delayed),
            ("inflight", s.inflight),
            ("dead", s.dlq),
        ):
            lines.append(f'ephq_messages{{stream="{stream}",state="{state}"}} {count}')
    lines += [
        "# HELP ephq_oldest_message_age_seconds Age of the oldest ready message; 0 when none is.",
        "# TYPE ephq_oldest_message_age_seconds gauge",
    ]
    for s in shown:
        age = _number(round(s.oldest_age or 0.0, 3))
        lines.append(f'ephq_oldest_message_age_seconds{{stream="{label_value(s.stream)}"}} {age}')
    return lines


class WorkerMetrics:
    """A worker's counters and handler-duration histogram; safe to update from many threads."""

    def __init__(self, stream: str, concurrency: int) -> None:
        self.stream = stream
        self.concurrency = concurrency
        self.started = time.time()
        self.running = 0
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._buckets = {outcome: [0] * len(BUCKETS) for outcome in OUTCOMES}
        self._sums = dict.fromkeys(OUTCOMES, 0.0)

    def observe(self, outcome: str, seconds: float) -> None:
        """One settled message; outcome is one of OUTCOMES."""
        with self._lock:
            self._counts[outcome] += 1
            self._sums[outcome] += seconds
            buckets = self._buckets[outcome]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1

    def lines(self) -> list[str]:
        stream = label_value(self.stream)
        started = _number(round(self.started, 3))
        with self._lock:
            counts, sums = dict(self._counts), dict(self._sums)
            buckets = {k: list(v) for k, v in self._buckets.items()}
        out = [
            "# HELP ephq_worker_messages_total Messages this worker settled, by outcome.",
            "# TYPE ephq_worker_messages_total counter",
        ]
        for outcome in OUTCOMES:
            out.append(
                f'ephq_worker_messages_total{{stream="{stream}",outcome="{outcome}"}} '
                f"{counts[outcome]}"
            )
        out += [
            "# HELP ephq_worker_handler_duration_seconds How long handlers ran, by outcome.",
            "# TYPE ephq_worker_handler_duration_seconds histogram",
        ]
        for outcome in OUTCOMES:
            labels = f'stream="{stream}",outcome="{outcome}"'
            out += _histogram(
                "ephq_worker_handler_duration_seconds",
                labels,
                buckets[outcome],
                counts[outcome],
                sums[outcome],
            )
        out += [
            "# HELP ephq_worker_handlers_running Handlers running now.",
            "# TYPE ephq_worker_handlers_running gauge",
            f'ephq_worker_handlers_running{{stream="{stream}"}} {self.running}',
            "# HELP ephq_worker_concurrency The most handlers this worker runs at once.",
            "# TYPE ephq_worker_concurrency gauge",
            f'ephq_worker_concurrency{{stream="{stream}"}} {self.concurrency}',
            "# HELP ephq_worker_start_time_seconds When the worker started, in Unix time.",
            "# TYPE ephq_worker_start_time_seconds gauge",
            f'ephq_worker_start_time_seconds{{stream="{stream}"}} {started}',
        ]
        return out


def _histogram(
    name: str, labels: str, buckets: Sequence[int], count: int, total: float
) -> list[str]:
    out = [
        f'{name}_bucket{{{labels},le="{_number(bound)}"}} {n}'
        for bound, n in zip(BUCKETS, buckets, strict=True)
    ]
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {count}')
    out.append(f"{name}_sum{{{labels}}} {_number(round(total, 6))}")
    out.append(f"{name}_count{{{labels}}} {count}")
    return out


def text(lines: Iterable[str]) -> str:
    return "".join(line + "\n" for line in lines)


def parse_address(text: str, option: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' (every interface) or '[::1]:PORT', as (host, port)."""
    from .errors import BadInput

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"{option} {text!r} is not HOST:PORT (as in 127.0.0.1:9464 or :9464)")
    return host.strip("[]") or "0.0.0.0", int(port)


Render = Callable[[], str]


def serve(address: tuple[str, int], render: Render) -> ThreadingHTTPServer:
    """An HTTP server answering GET /metrics with render(); the caller runs serve_forever.

    OSError if the address cannot be bound: the caller says so.
    """
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a connection that sends nothing is closed, not a thread held for good

        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is here")
                return
            try:
                body = render().encode()
                status = 200
            except Exception as exc:
                body, status = f"ephq: {exc}\n".encode(), 500
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every 15 s is not news

    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

        def handle_error(self, request: object, client_address: Any) -> None:
            """A scraper that hangs up mid-answer (its timeout, a restart) is not news; anything
            else is one line on stderr, not the standard library's traceback."""
            exc = sys.exc_info()[1]
            if isinstance(exc, ConnectionError):
                return
            print(
                f"ephq metrics: a request from {client_address[0]} failed: {exc!r}",
                file=sys.stderr,
            )

    return Server(address, Handler)
