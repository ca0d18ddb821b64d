"""The worker loop: lease messages, run a handler for each, settle each by its outcome.

One implementation for Python and the shell: `Worker(queue, stream, handler)` takes any callable
`handler(message, cancelled)`, and `ephq worker --exec CMD` passes a CommandHandler.

- Up to `concurrency` handlers run at once, on as many threads started with the worker (a
  thread started per message cost more than a no-op handler). The loop leases a message when
  a slot is free, and one more while its last LOOKAHEAD_RUNS handlers each took between
  OVERLAP_MIN_S and `lookahead_within` (LOOKAHEAD_S): then the next handler starts the moment
  one ends, while a settler thread acks the one that ended, instead of after an ack and a
  round trip to the queue (for a handler process of half a millisecond, a quarter of the
  time or more). The message held meanwhile waits no longer than such a handler runs. Slower
  handlers get none ahead, so other workers take what this one could not start; a message
  held ahead is released unrun when the worker stops. At concurrency 1, handlers that have
  each returned within INLINE_MAX_S (Python functions with nothing to wait for) run on the
  leasing thread itself, where the hop to a handler thread and back cost more than they did.
- A handler that starts apart (`start_handler`, as a command does: it starts the process and
  returns at once, with a call that waits for its end) has no leasing, handler or settler
  threads, whose hops cost a quarter of a command's time: each of `concurrency` threads (the
  worker's own among them) runs whole cycles (`_cycle`): lease, start the handler, ack the
  last message (and at concurrency 1 lease one ahead) while it runs, wait for its end. One
  thread leases at a time: one long poll when the stream is empty, not one per thread.
- A keeper thread extends each running lease when half of it is left, so a handler may run far
  longer than `visibility`. If the worker dies, its leases expire and another worker takes over.
- Outcomes: return -> ack; PermanentFailure -> dead-letter now; Cancelled -> release (the attempt
  does not count); HandlerBroken -> release and stop the worker (`broken` says why); anything
  else -> nack with exponential backoff, dead-lettered by the queue once attempts run out, with
  the failure as its last error.
- stop() (from SIGTERM or SIGINT) stops leasing and lets running handlers finish within `grace`;
  then they are cancelled and their messages released. stop(now=True) cancels at once. (The
  keeper thread cancels them too: a handler running on the leasing thread holds it.)
- Waiting for work is the queue's long-poll, in short slices so that a stop is seen promptly.
- When the store is unavailable (a database restarting, a dropped connection) every call is
  retried with backoff, with one notice when it goes and one when it is back; nothing is lost:
  a lease that runs out meanwhile is delivered again.
- rate: at most so many handlers start per unit of time (rate.py); the loop waits for a token
  before it leases, so a message it may not start yet is never held.
- drain: stop once nothing is visible and no handler runs; with drain_retries, not while a
  delayed message (a retry) comes due within that many seconds: it is waited for.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TypeVar

from ..backend import Holder
from ..durations import to_ns
from ..errors import BadInput, EphqError, LeaseLost, Unavailable
from ..ids import check_stream_name
from ..message import Message
from ..queue import Queue, check_count
from .outcomes import Cancelled, HandlerBroken, PermanentFailure
from .rate import Rate, TokenBucket, parse_rate

Handler = Callable[[Message, threading.Event], object]
# What a handler that starts apart (CommandHandler) offers as `start_handler`: it starts the
# message's handler and returns at once, with a call that waits for the end and raises as the
# handler would.
StartHandler = Callable[[Message, threading.Event], Callable[[], object]]
# The part of a lease that passes before the keeper extends it.
EXTEND_AFTER = 0.5
# Handlers at once, at most: each runs on a thread of its own (and a command in a process of
# its own). Far more than a host runs usefully; tens of thousands exhaust the process's
# threads and ended with an abort from the C library, not an error.
MAX_CONCURRENCY = 1000
# Retrying while the store is unavailable: the first pause, doubled up to the last.
OUTAGE_FIRST_PAUSE_S = 0.25
OUTAGE_MAX_PAUSE_S = 8.0
T = TypeVar("T")


class _GaveUp(Exception):
    """The store stayed unavailable until the worker was told to stop."""


# One message is leased ahead of the running handlers while each of the last LOOKAHEAD_RUNS
# took between OVERLAP_MIN_S and LOOKAHEAD_S. A quicker handler (a Python function returning
# at once) leaves nothing to overlap a dequeue or an ack with: they would only contend for the
# interpreter with it, in more threads.
LOOKAHEAD_S = 0.05
LOOKAHEAD_RUNS = 8
OVERLAP_MIN_S = 0.0002
# At concurrency 1, handlers this quick run on the leasing thread itself.
INLINE_MAX_S = 0.0001
# How often the keeper looks at leases to extend and announces the ones this worker holds.
ANNOUNCE_EVERY_S = 0.1
# How long one long-poll lasts before the loop looks at its stop flag again.
POLL_SLICE_S = 0.5


@dataclass
class Summary:
    handled: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    lost: int = 0


@dataclass
class Outcome:
    message: Message
    result: str  # acked | retry | dead-lettered | released | lease-lost
    seconds: float
    detail: str = ""
    retry_in: float | None = None


@dataclass
class _Job:
    message: Message
    cancelled: threading.Event = field(default_factory=threading.Event)
    extend_at: float = 0.0
    lost: bool = False
    leased_at_ns: int = field(default_factory=time.time_ns)
    began: bool = False  # a handler thread took it (else it is held ahead, waiting for one)
    ended: bool = False  # its handler returned (it may still be being settled)


@dataclass
class _Cycle:
    """One cycle thread's own (_cycle): a message whose handler succeeded, not acked yet; one
    leased ahead, not started; the handler running, started apart, and when."""

    unacked: tuple[_Job, float] | None = None
    ahead: _Job | None = None
    running: tuple[_Job, float, Callable[[], object]] | None = None


class Worker:
    def __init__(
        self,
        queue: Queue,
        stream: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        visibility: float = 30.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 300.0,
        drain: bool = False,
        drain_retries: float | None = None,
        max_messages: int | None = None,
        dlq: bool = False,
        grace: float = 30.0,
        on_outcome: Callable[[Outcome], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        name: str = "python",
        rate: Rate | str | None = None,
        lookahead_within: float = LOOKAHEAD_S,
    ) -> None:
        # A Worker that could never work is refused before it starts a thread (a concurrency
        # of 0 would lease nothing and wait for good).
        check_stream_name(stream)
        if not callable(handler):
            raise BadInput(f"handler must be callable (message, cancelled), not {handler!r}")
        if check_count(concurrency, "concurrency") > MAX_CONCURRENCY:
            raise BadInput(f"concurrency must be at most {MAX_CONCURRENCY:,}, not {concurrency:,}")
        if max_messages is not None:
            check_count(max_messages, "max_messages")
        to_ns(visibility, "visibility", allow_zero=False)
        for what, seconds in (
            ("retry_delay", retry_delay),
            ("max_retry_delay", max_retry_delay),
            ("grace", grace),
            ("lookahead_within", lookahead_within),
            ("drain_retries", drain_retries or 0),
        ):
            to_ns(seconds, what)
        self.queue = queue
        self.stream = stream
        self.handler = handler
        self.concurrency = concurrency
        self.visibility = visibility
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.drain = drain
        self.drain_retries = drain_retries
        self.max_messages = max_messages
        self.dlq = dlq
        self.grace = grace
        self.on_outcome = on_outcome
        self.on_notice = on_notice  # told, in one line, when the store goes away and comes back
        self.name = name  # what `ephq leases` shows as the holder's worker
        if queue.lease_keeper is not None:  # it announces the leases this worker takes
            queue.lease_keeper.name = name
        if isinstance(rate, str):
            rate = parse_rate(rate, "rate")
        self._bucket = None if rate is None else TokenBucket(rate)
        self.rate_limited = False  # waiting for the rate limit to let the next handler start
        self.summary = Summary()
        self._jobs: dict[str, _Job] = {}
        self._changed = threading.Condition()
        # Plain flags, not Events: stop() runs in signal handlers, which must not take locks.
        self._stopping = False
        self._stop_now = False
        self._grace_ends = float("inf")  # when running handlers are cancelled, once stopping
        self.broken: str | None = None  # why the worker stopped: its handler cannot run
        # What the store refused while settling a message, extending a lease or leasing one in
        # a cycle (a read-only file system, denied permission): the worker stops, and run()
        # raises it once every thread has ended.
        self.failure: Exception | None = None
        self._done = threading.Event()
        self._started = 0
        self._settled = 0
        self._waiting: SimpleQueue[_Job | None] = SimpleQueue()
        # Jobs whose handlers have returned, for the settler thread: (job, start, whether the
        # handler ran, what it raised).
        self._ran: SimpleQueue[tuple[_Job, float, bool, BaseException | None] | None] = (
            SimpleQueue()
        )
        # Handlers this quick (seconds; 0: none is) earn a message leased ahead of them.
        self.lookahead_within = lookahead_within
        self._recent: collections.deque[float] = collections.deque(maxlen=LOOKAHEAD_RUNS)
        # Handlers that start apart: one thread leases at a time (_lease_in_cycle); a draining
        # one that found nothing left tells the others (_drain_ends).
        self._leasing = threading.Lock()
        self._drained_out = False
        # This worker's own announcement of its leases (when its Queue keeps none: the CLI's),
        # made by the keeper thread at each tick and by a cycle as soon as it leases.
        self._announcer: Holder | None = None
        self._announced: set[str] = set()
        self._announcing = threading.Lock()

    # -- control ---------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop leasing; with now, also stop running handlers at once. Safe from a signal."""
        if not self._stopping:
            self._grace_ends = time.monotonic() + self.grace
        self._stopping = True
        if now:
            self._stop_now = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> int:
        """Handlers running now (not a message held ahead, nor one being settled)."""
        return sum(1 for job in list(self._jobs.values()) if job.began and not job.ended)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> Summary:
        self._announcer = self._holder()
        keeper = threading.Thread(target=self._keep_leases, name="ephq-lease-keeper", daemon=True)
        keeper.start()
        start_handler: StartHandler | None = getattr(self.handler, "start_handler", None)
        if callable(start_handler):
            try:
                self._cycles(start_handler)
            finally:
                self._done.set()
                keeper.join()
            if self.failure is not None:
                raise self.failure
            return self.summary
        settler = threading.Thread(target=self._settler, name="ephq-settler", daemon=True)
        settler.start()
        hands: list[threading.Thread] = []
        try:
            for i in range(self.concurrency):
                hand = threading.Thread(target=self._hand, name=f"ephq-handler-{i}", daemon=True)
                hand.start()
                hands.append(hand)
        except RuntimeError as exc:
            self._no_more_threads(exc, len(hands))
        try:
            self._lease_loop()
        finally:
            self._finish()
            for _ in hands:
                self._waiting.put(None)
            for hand in hands:
                hand.join()
            self._ran.put(None)
            settler.join()
            self._done.set()
            keeper.join()
        if self.failure is not None:
            raise self.failure
        return self.summary

    def _no_more_threads(self, exc: RuntimeError, started: int) -> None:
        """The process may start no more threads (ulimit -u): nothing more is leased, and what
        started ends."""
        self.failure = BadInput(
            f"cannot start {self.concurrency} handler threads ({exc} after {started}): "
            "lower the concurrency"
        )
        self._stopping = True

    def _hand(self) -> None:
        """One of the handler threads: run jobs as the loop hands them out, until told to end.
        When the next job is already waiting (held ahead), the settler thread settles this
        one, so that the next handler starts at once; otherwise it is settled here."""
        while (job := self._waiting.get()) is not None:
            start, handled, failure = self._run(job)
            if self._waiting.empty():
                self._settle_job(job, start, handled, failure)
            else:  # the next is held ahead: it starts now, while the settler settles this one
                self._ran.put((job, start, handled, failure))

    def _settler(self) -> None:
        while (ran := self._ran.get()) is not None:
            self._settle_job(*ran)

    def _lease_loop(self) -> None:
        while not self._stopping:
            if self.max_messages is not None and self._started >= self.max_messages:
                return
            self._wait_for_change(lambda: self._free_slots() == 0)
            want = self._free_slots()
            if self._stopping or want == 0:
                continue
            if not self._token(wait=True):
                continue
            if self._bucket is not None:
                want = min(want, self._bucket.available())
            settled, idle = self._settled, self.running == 0
            # Draining never long-polls: it ends as soon as nothing is visible and all is settled.
            wait = 0.0 if self.drain else POLL_SLICE_S
            try:
                got = self._through(
                    "lease messages",
                    functools.partial(
                        self.queue.dequeue_many,
                        self.stream,
                        want,
                        self.visibility,
                        wait=wait,
                        dlq=self.dlq,
                    ),
                )
            except _GaveUp:
                return
            if self._bucket is not None:
                self._bucket.take(len(got))
            # Announced at the keeper's next tick, not here as a cycle does (_lease_in_cycle): each
            # announcement cost a no-op Python handler a fifth of its rate.
            if self._inline():
                for message in got:
                    self._run_here(message)
            else:
                for message in got:
                    self._start(message)
            if not got and self.drain:
                if idle:
                    if self._drained():
                        return
                    continue
                # A running handler may yet give its message back: wait for one to settle.
                self._wait_for_change(functools.partial(self._none_settled_since, settled))

    def _cycles(self, start_handler: StartHandler) -> None:
        """Handlers that start apart (commands): `concurrency` threads, this one among them,
        each running the whole cycle of one handler at a time (_cycle); no hand-off from a
        leasing thread to a handler thread and back, which cost a quarter of a command's time."""
        cycles: list[threading.Thread] = []
        try:
            for i in range(1, self.concurrency):
                cycle = threading.Thread(
                    target=self._cycle, args=(start_handler,), name=f"ephq-cycle-{i}", daemon=True
                )
                cycle.start()
                cycles.append(cycle)
        except RuntimeError as exc:
            self._no_more_threads(exc, len(cycles) + 1)
        try:
            self._cycle(start_handler)
        finally:
            for cycle in cycles:
                cycle.join()

    def _cycle(self, start_handler: StartHandler) -> None:
        """One thread's cycle: the next handler starts first; while it runs, the last message
        is acked and (at concurrency 1, for quick handlers, as _lease_ahead says) the one after
        is leased; then the wait for its end. A message whose handler failed is settled before
        the next starts: its outcome may stop the worker (a broken handler)."""
        cycle = _Cycle()
        try:
            while (job := self._next_in_cycle(cycle)) is not None:
                self._run_apart(cycle, job, start_handler)
        except _GaveUp:
            pass
        except Exception as exc:  # a store that refused a lease: the worker stops with it
            self._failed(exc)
        finally:
            if cycle.running is not None:
                job, start, finish = cycle.running
                self._settle_job(job, start, True, self._failure_of(finish, start))
            self._ack_unacked(cycle)
            if cycle.ahead is not None:
                self._settle_job(cycle.ahead, time.monotonic(), False, None)

    def _next_in_cycle(self, cycle: _Cycle) -> _Job | None:
        """The next message to run: the one held ahead, or one leased now; None once the
        worker is done (stopping, max_messages, drained)."""
        while True:
            job, cycle.ahead = cycle.ahead, None
            looked = False
            if job is None:
                job, looked = self._lease_in_cycle(cycle)
            if job is not None:
                if not self._stopping:
                    return job
                self._settle_job(job, time.monotonic(), False, None)  # held ahead: unrun
            elif cycle.unacked is not None:
                self._ack_unacked(cycle)
            elif not self._may_lease() or (looked and self.drain and self._drain_ends()):
                return None

    def _lease_in_cycle(self, cycle: _Cycle) -> tuple[_Job | None, bool]:
        """A message leased for this cycle, if one came; and whether the queue was looked at.

        One thread leases at a time, the others waiting their turn: one long poll, not a herd
        of them, and max_messages and the rate limit counted exactly. A cycle with a message
        to ack does not wait for its turn, nor for a message: it acks first."""
        if not self._leasing.acquire(timeout=0 if cycle.unacked else POLL_SLICE_S):
            return None, False
        try:
            if not self._may_lease() or not self._token(wait=cycle.unacked is None):
                return None, False
            # A long poll only with nothing to ack meanwhile; draining never polls long.
            waiting = cycle.unacked is None and not self.drain
            job = self._lease_one(POLL_SLICE_S if waiting else 0.0)
        finally:
            self._leasing.release()
        if job is not None:
            self._announce_leases()  # (out of the lock: the others may lease meanwhile)
        return job, True

    def _run_apart(self, cycle: _Cycle, job: _Job, start_handler: StartHandler) -> None:
        """Start job's handler; while it runs, ack the last message and lease one ahead; wait
        for its end. A failure is settled at once, a success once the next handler starts."""
        start = time.monotonic()
        with self._changed:
            job.began = True
        failure: BaseException | None = None
        try:
            finish = start_handler(job.message, job.cancelled)
        except Exception as exc:  # it could not start (no process left): a failure like any
            failure = exc
        self._ack_unacked(cycle)
        if failure is None:
            cycle.running = (job, start, finish)
            if self.concurrency == 1 and self._lease_ahead():
                with self._leasing:
                    if self._may_lease() and self._token(wait=False):
                        cycle.ahead = self._lease_one(0.0)
                if cycle.ahead is not None:
                    self._announce_leases()
            failure = self._failure_of(finish, start)
            cycle.running = None
        with self._changed:
            job.ended = True
        if failure is None:
            cycle.unacked = (job, start)
        else:
            self._settle_job(job, start, True, failure)

    def _ack_unacked(self, cycle: _Cycle) -> None:
        if cycle.unacked is not None:
            job, start = cycle.unacked
            cycle.unacked = None
            self._settle_job(job, start, True, None)

    def _drain_ends(self) -> bool:
        """A draining cycle found nothing visible: whether the worker is done. Not while a
        handler runs (it may yet give its message back: this waits for one to settle), nor
        while a retry comes due within drain_retries (this waits for it)."""
        with self._changed:
            busy, settled = bool(self._jobs), self._settled
        if busy:
            self._wait_for_change(functools.partial(self._none_settled_since, settled))
            return False
        if self._drained():
            self._drained_out = True  # the other cycles end too
            return True
        return False

    def _drained(self) -> bool:
        """Draining, nothing visible and nothing running: whether that is the end. It is not
        while a retry comes due within drain_retries: then this waits until it does."""
        retry_in = self._retry_within_reach()
        if retry_in is None:
            return True
        self._wait_for_change(_always, time.monotonic() + retry_in)
        return False

    def _may_lease(self) -> bool:
        return (
            not self._stopping
            and not self._drained_out
            and (self.max_messages is None or self._started < self.max_messages)
        )

    def _token(self, *, wait: bool) -> bool:
        """Whether the rate limit lets a handler start now (a message it may not start yet is
        never leased: it stays visible to others). If not, and wait, waits until it will."""
        if self._bucket is None or self._bucket.available() > 0:
            return True
        if wait:
            self.rate_limited = True
            self._wait_for_change(_always, time.monotonic() + self._bucket.seconds_until_token())
            self.rate_limited = False
        return False

    def _lease_one(self, wait: float) -> _Job | None:
        """One message leased and taken as a job, waiting up to wait seconds for one."""
        lease = functools.partial(
            self.queue.dequeue_many, self.stream, 1, self.visibility, wait=wait, dlq=self.dlq
        )
        got = self._through("lease messages", lease)
        if not got:
            return None
        if self._bucket is not None:
            self._bucket.take(1)
        return self._take(got[0])

    def _retry_within_reach(self) -> float | None:
        """Seconds until the stream's next delayed message (a retry) is due, if draining waits
        for it: within drain_retries from now."""
        if self.drain_retries is None:
            return None
        due = self._through(
            "look for retries",
            functools.partial(self.queue.next_delayed, self.stream, dlq=self.dlq),
        )
        if due is None:
            return None
        seconds = max(0.0, due.timestamp() - time.time())
        return seconds if seconds <= self.drain_retries else None

    def _none_settled_since(self, settled: int) -> bool:
        return self._settled == settled

    def _wait_for_change(self, still: Callable[[], bool], until: float | None = None) -> None:
        """Wait while still() holds and (if given) time.monotonic() is before until, waking
        whenever a handler settles (or to look at stop).

        The test and the wait are under one lock, so a handler settling in between is not missed.
        """
        with self._changed:
            while still() and not self._stopping:
                if until is None:
                    self._changed.wait(POLL_SLICE_S)
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(min(POLL_SLICE_S, left))

    def _lease_ahead(self) -> bool:
        """Whether to hold one message ahead of the running handlers: each of the last
        LOOKAHEAD_RUNS took between OVERLAP_MIN_S and lookahead_within."""
        recent = self._recent
        return (
            len(recent) == LOOKAHEAD_RUNS
            and min(recent) > OVERLAP_MIN_S
            and max(recent) < self.lookahead_within
        )

    def _free_slots(self) -> int:
        free = self.concurrency + self._lease_ahead() - len(self._jobs)
        if self.max_messages is not None:
            free = min(free, self.max_messages - self._started)
        return max(0, free)

    def _inline(self) -> bool:
        """Whether to run the next handler on this (the leasing) thread: one at a time, and
        each of the last LOOKAHEAD_RUNS took under INLINE_MAX_S (a Python function that returns
        at once), where handing it to a handler thread and back cost more than the handler."""
        recent = self._recent
        return (
            self.concurrency == 1 and len(recent) == LOOKAHEAD_RUNS and max(recent) < INLINE_MAX_S
        )

    def _run_here(self, message: Message) -> None:
        job = self._take(message)
        self._settle_job(job, *self._run(job))

    def _start(self, message: Message) -> None:
        self._waiting.put(self._take(message))

    def _take(self, message: Message) -> _Job:
        """A leased message becomes one of this worker's jobs (its lease kept from now on)."""
        job = _Job(message, extend_at=time.monotonic() + self.visibility * EXTEND_AFTER)
        with self._changed:
            self._jobs[message.id] = job
        self._started += 1
        return job

    def _run(self, job: _Job) -> tuple[float, bool, BaseException | None]:
        """Run job's handler: when it began, whether it ran, and what it raised."""
        start = time.monotonic()
        with self._changed:
            job.began = True
        # A message held ahead when the worker was told to stop is not started.
        handled = not self._stopping
        failure = self._run_handler(job) if handled else None
        with self._changed:
            job.ended = True
        return start, handled, failure

    def _finish(self) -> None:
        """Let running handlers finish (within grace, when stopping), cancel the rest, and wait
        for every message to be settled."""
        end = time.monotonic() + self.grace if self._stopping else float("inf")
        with self._changed:
            while self._jobs and not self._stop_now and time.monotonic() < end:
                self._changed.wait(min(0.1, max(0.0, end - time.monotonic())))
            for job in self._jobs.values():
                job.cancelled.set()
            while self._jobs:
                self._changed.wait(0.1)

    # -- one message -----------------------------------------------------------------------

    def _run_handler(self, job: _Job) -> BaseException | None:
        """Run the handler; what it raised (None: it succeeded)."""
        handler = functools.partial(self.handler, job.message, job.cancelled)
        return self._failure_of(handler, time.monotonic())

    def _failure_of(self, handler: Callable[[], object], began: float) -> BaseException | None:
        """Call handler (or the wait for one started apart at began): what it raised (None: it
        succeeded)."""
        try:
            handler()
        except Exception as exc:
            return exc
        except BaseException as exc:
            # sys.exit() (or a stray KeyboardInterrupt) in a handler thread would end only that
            # thread, and the next message would wait for it for good: a failure like any other.
            return RuntimeError(f"the handler raised {exc!r}")
        self._recent.append(time.monotonic() - began)
        return None

    def _settle_job(
        self, job: _Job, start: float, handled: bool, failure: BaseException | None
    ) -> None:
        try:
            try:
                outcome = (
                    self._settle(job, start, failure) if handled else self._give_back(job, start)
                )
            except Exception as exc:
                # Not one this thread can end with: a handler thread that died would leave the
                # next message waiting for good. The message keeps its lease until it runs out.
                self._failed(exc)
                return
            # Counted and told before its slot is free: whoever sees the next message leased
            # (the metrics, the log) has seen this one's outcome.
            with self._changed:  # settled on several threads at once
                self._count(outcome)
            if self.on_outcome is not None:
                self._tell(self.on_outcome, outcome)
        finally:
            with self._changed:
                del self._jobs[job.message.id]
                self._settled += 1
                self._changed.notify_all()

    def _failed(self, exc: Exception) -> None:
        """The store refused to settle a message, extend a lease or (in a cycle, _cycle) lease
        one: stop leasing; run() raises the first such."""
        with self._changed:
            if self.failure is None:
                self.failure = exc
        self.stop()

    def _tell(self, callback: Callable[[Outcome], None], outcome: Outcome) -> None:
        """Call on_outcome: what it raises is said (on_notice), never left to end the thread
        that settled the message (a handler thread that died would leave the next job waiting
        for good)."""
        try:
            callback(outcome)
        except Exception as exc:
            if self.on_notice is not None:
                with contextlib.suppress(Exception):
                    self.on_notice(f"on_outcome raised {exc!r}; the worker goes on")

    def _give_back(self, job: _Job, start: float) -> Outcome:
        m = job.message
        try:
            release = functools.partial(self.queue.release, self.stream, m.receipt or "")
            self._through("release a message", release)
        except (LeaseLost, _GaveUp) as exc:
            return Outcome(m, "lease-lost", time.monotonic() - start, str(exc))
        return Outcome(m, "released", time.monotonic() - start, "the worker is stopping")

    def _settle(self, job: _Job, start: float, failure: BaseException | None) -> Outcome:
        """Ack, release, dead-letter or retry the message by what its handler did."""
        m = job.message
        receipt = m.receipt or ""
        q, stream = self.queue, self.stream
        try:
            if failure is None:
                self._through("ack a message", functools.partial(q.ack, stream, receipt))
                return Outcome(m, "acked", time.monotonic() - start)
            if isinstance(failure, Cancelled):
                self._through("release a message", functools.partial(q.release, stream, receipt))
                return Outcome(m, "released", time.monotonic() - start, str(failure))
            if isinstance(failure, HandlerBroken):
                self._through("release a message", functools.partial(q.release, stream, receipt))
                self.broken = str(failure)
                self.stop()
                return Outcome(m, "released", time.monotonic() - start, str(failure))
            # A dead letter has nowhere further to go: its permanent failure is retried.
            if isinstance(failure, PermanentFailure) and not self.dlq:
                reject = functools.partial(q.reject, stream, receipt, str(failure))
                self._through("dead-letter a message", reject)
                return Outcome(m, "dead-lettered", time.monotonic() - start, str(failure))
            return self._retry(m, start, failure)
        except LeaseLost as exc:
            return Outcome(m, "lease-lost", time.monotonic() - start, str(exc))
        except _GaveUp as exc:
            return Outcome(m, "lease-lost", time.monotonic() - start, str(exc))

    def _retry(self, m: Message, start: float, exc: BaseException) -> Outcome:
        """Nack with backoff; the queue dead-letters it instead if that was its last attempt."""
        reason = str(exc) or type(exc).__name__
        delay = min(self.retry_delay * 2 ** max(0, self._tries(m) - 1), self.max_retry_delay)
        config = self._through("read settings", functools.partial(self.queue.config, self.stream))
        last = not self.dlq and m.attempts >= config.max_attempts
        nack = functools.partial(
            self.queue.nack, self.stream, m.receipt or "", delay=delay, reason=reason
        )
        self._through("nack a message", nack)
        if last:
            return Outcome(m, "dead-lettered", time.monotonic() - start, reason)
        return Outcome(m, "retry", time.monotonic() - start, reason, retry_in=delay)

    def _through(self, doing: str, call: Callable[[], T]) -> T:
        """call(), again and again while the store is unavailable (a database restarting, a
        dropped connection), with backoff: one notice when it goes, one when it is back.
        _GaveUp once the worker is told to stop at once, or is stopping and was leasing."""
        pause = OUTAGE_FIRST_PAUSE_S
        failing = False
        while True:
            try:
                result = call()
            except Unavailable as exc:
                if not failing:
                    self._notice(f"cannot {doing}, retrying until the store answers: {exc}")
                failing = True
                if self._stop_now or (self._stopping and doing == "lease messages"):
                    raise _GaveUp(f"the store is unavailable: {exc}") from None
                time.sleep(pause)
                pause = min(pause * 2, OUTAGE_MAX_PAUSE_S)
                continue
            if failing:
                self._notice("the store answers again")
            return result

    def _notice(self, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(text)

    def _tries(self, m: Message) -> int:
        """This message's deliveries to this kind of consumer: a dead letter's attempts go on
        counting from its deliveries in the stream, which its backoff does not pay for."""
        if not self.dlq:
            return m.attempts
        dead = m.metadata.get("dead")
        before = dead.get("attempts") if isinstance(dead, dict) else None
        return m.attempts - before if isinstance(before, int) and before < m.attempts else 1

    def _count(self, outcome: Outcome) -> None:
        s = self.summary
        s.handled += 1
        if outcome.result == "acked":
            s.acked += 1
        elif outcome.result == "retry":
            s.retried += 1
        elif outcome.result == "dead-lettered":
            s.dead_lettered += 1
        elif outcome.result == "released":
            s.released += 1
        else:
            s.lost += 1

    # -- leases ----------------------------------------------------------------------------

    def _keep_leases(self) -> None:
        """Extend each running lease when half of it is left: a busy machine has time to spare.
        Also say which leases this worker holds, for `ephq leases`, when that changed."""
        try:
            while not self._done.is_set():
                now = time.monotonic()
                with self._changed:
                    jobs = list(self._jobs.values())
                if self._stop_now or now >= self._grace_ends:
                    # What _finish does for handler threads, here for a handler running on
                    # the leasing thread (_run_here), which _finish cannot reach.
                    for job in jobs:
                        job.cancelled.set()
                due = [j for j in jobs if j.extend_at <= now and not j.lost]
                for job in due:
                    try:
                        self.queue.extend(self.stream, job.message.receipt or "", self.visibility)
                        job.extend_at = time.monotonic() + self.visibility * EXTEND_AFTER
                    except LeaseLost:
                        job.lost = True  # settling it will say so
                    except Unavailable:
                        continue  # the next tick tries again; the lease has half left
                    except EphqError as exc:  # refused, not away: this thread must go on
                        self._failed(exc)  # extending, or the leases run out under handlers
                self._announce()
                self._done.wait(min(ANNOUNCE_EVERY_S, self.visibility / 20))
        finally:
            with self._announcing:
                if self._announcer is not None:
                    self._announcer.close()
                    self._announcer = None

    def _announce_leases(self) -> None:
        """Announce a lease a cycle just took, before its handler starts: a SIGKILL from now
        on gives it back at once. Where the worker's Queue keeps leases, it announces them."""
        keeper = self.queue.lease_keeper
        if keeper is not None:
            keeper.announce()
        else:
            self._announce()

    def _announce(self) -> None:
        """Publish the leases this worker holds now, if that changed since it last did: a
        SIGKILLed worker's announced leases come back at once, the others at their deadlines.
        Called by a cycle that took a lease, before its handler starts, and at the keeper
        thread's ticks. Where the worker's Queue keeps its leases, that announces them
        (_holder is None)."""
        with self._announcing:
            if self._announcer is None:
                return
            with self._changed:
                held = {j.message.receipt or "": j.leased_at_ns for j in self._jobs.values()}
            if held.keys() == self._announced:
                return
            try:
                self._announcer.publish(held)
                self._announced = set(held)
            except (EphqError, OSError):
                pass  # an announcement is a hint: the next tick says it again

    def _holder(self) -> Holder | None:
        """Announce this worker as a holder of leases; without it if the store is away, or
        when its Queue announces them."""
        if self.queue.lease_keeper is not None:
            return None
        try:
            return self.queue.hold(self.stream, dlq=self.dlq, worker=self.name)
        except Unavailable:
            return None


def _always() -> bool:
    return True
