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
- A keeper thread tends the running leases (tending.py): each is extended when half of it is
  left, and the worker's leases are announced. If the worker dies, its leases come back.
- Each message is settled by what its handler did (settling.py); a HandlerBroken stops the
  worker (`broken` says why).
- stop() (from SIGTERM or SIGINT) stops leasing and lets running handlers finish within `grace`;
  then they are cancelled and their messages released. stop(now=True) cancels at once. (The
  keeper thread cancels them too: a handler running on the leasing thread holds it.)
- Waiting for work is the queue's long-poll, in short slices so that a stop is seen promptly.
- When the store is unavailable (a database restarting, a dropped connection) every call is
  retried with backoff (outage.py); nothing is lost: a lease that runs out meanwhile is
  delivered again.
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
from dataclasses import dataclass
from queue import SimpleQueue

from ..durations import to_ns
from ..errors import BadInput
from ..ids import check_stream_name
from ..message import Message
from ..queue import Queue, check_count
from .job import Job
from .outage import GaveUp, Retrying
from .outcomes import HandlerBroken
from .rate import Rate, TokenBucket, parse_rate
from .settling import Outcome, Settling, Summary
from .tending import LeaseTender

Handler = Callable[[Message, threading.Event], object]
# What a handler that starts apart (CommandHandler) offers as `start_handler`: it starts the
# message's handler and returns at once, with a call that waits for the end and raises as the
# handler would.
StartHandler = Callable[[Message, threading.Event], Callable[[], object]]
# Handlers at once, at most: each runs on a thread of its own (and a command in a process of
# its own). Far more than a host runs usefully; tens of thousands exhaust the process's
# threads and ended with an abort from the C library, not an error.
MAX_CONCURRENCY = 1000
# One message is leased ahead of the running handlers while each of the last LOOKAHEAD_RUNS
# took between OVERLAP_MIN_S and LOOKAHEAD_S. A quicker handler (a Python function returning
# at once) leaves nothing to overlap a dequeue or an ack with: they would only contend for the
# interpreter with it, in more threads.
LOOKAHEAD_S = 0.05
LOOKAHEAD_RUNS = 8
OVERLAP_MIN_S = 0.0002
# At concurrency 1, handlers this quick run on the leasing thread itself.
INLINE_MAX_S = 0.0001
# How long one long-poll lasts before the loop looks at its stop flag again.
POLL_SLICE_S = 0.5


@dataclass
class _Cycle:
    """One cycle thread's own (_cycle): a message whose handler succeeded, not acked yet; one
    leased ahead, not started; the handler running, started apart, and when."""

    unacked: tuple[Job, float] | None = None
    ahead: Job | None = None
    running: tuple[Job, float, Callable[[], object]] | None = None


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
        self._jobs: dict[str, Job] = {}
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
        self._waiting: SimpleQueue[Job | None] = SimpleQueue()
        # Jobs whose handlers have returned, for the settler thread: (job, start, whether the
        # handler ran, what it raised).
        self._ran: SimpleQueue[tuple[Job, float, bool, BaseException | None] | None] = SimpleQueue()
        # Handlers this quick (seconds; 0: none is) earn a message leased ahead of them.
        self.lookahead_within = lookahead_within
        self._recent: collections.deque[float] = collections.deque(maxlen=LOOKAHEAD_RUNS)
        # Handlers that start apart: one thread leases at a time (_lease_in_cycle); a draining
        # one that found nothing left tells the others (_drain_ends).
        self._leasing = threading.Lock()
        self._drained_out = False
        self._calls = Retrying(self._notice, self._gives_up)
        self._settling = Settling(queue, stream, dlq, retry_delay, max_retry_delay, self._calls)
        self._tender = LeaseTender(queue, stream, visibility, self._jobs_now, self._failed)

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
        self._tender.open(dlq=self.dlq, worker=self.name)
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
                got = self._calls.call(
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
            except GaveUp:
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
        except GaveUp:
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

    def _next_in_cycle(self, cycle: _Cycle) -> Job | None:
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

    def _lease_in_cycle(self, cycle: _Cycle) -> tuple[Job | None, bool]:
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
            self._tender.announce()  # (out of the lock: the others may lease meanwhile)
        return job, True

    def _run_apart(self, cycle: _Cycle, job: Job, start_handler: StartHandler) -> None:
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
                    self._tender.announce()
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

    def _lease_one(self, wait: float) -> Job | None:
        """One message leased and taken as a job, waiting up to wait seconds for one."""
        lease = functools.partial(
            self.queue.dequeue_many, self.stream, 1, self.visibility, wait=wait, dlq=self.dlq
        )
        got = self._calls.call("lease messages", lease)
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
        due = self._calls.call(
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

    def _take(self, message: Message) -> Job:
        """A leased message becomes one of this worker's jobs (its lease kept from now on)."""
        job = Job(message, extend_at=self._tender.next_extension())
        with self._changed:
            self._jobs[message.id] = job
        self._started += 1
        return job

    def _run(self, job: Job) -> tuple[float, bool, BaseException | None]:
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

    def _run_handler(self, job: Job) -> BaseException | None:
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
        self, job: Job, start: float, handled: bool, failure: BaseException | None
    ) -> None:
        try:
            try:
                m = job.message
                settling = self._settling
                outcome = (
                    settling.settle(m, start, failure) if handled else settling.give_back(m, start)
                )
                if handled and isinstance(failure, HandlerBroken):
                    self.broken = str(failure)
                    self.stop()
            except Exception as exc:
                # Not one this thread can end with: a handler thread that died would leave the
                # next message waiting for good. The message keeps its lease until it runs out.
                self._failed(exc)
                return
            # Counted and told before its slot is free: whoever sees the next message leased
            # (the metrics, the log) has seen this one's outcome.
            with self._changed:  # settled on several threads at once
                self.summary.count(outcome)
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

    def _notice(self, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(text)

    # -- leases ----------------------------------------------------------------------------

    def _keep_leases(self) -> None:
        """The keeper thread: tend the leases every tick (tending.py); once the grace is over,
        cancel what still runs."""
        try:
            while not self._done.is_set():
                jobs = self._jobs_now()
                if self._stop_now or time.monotonic() >= self._grace_ends:
                    # What _finish does for handler threads, here for a handler running on
                    # the leasing thread (_run_here), which _finish cannot reach.
                    for job in jobs:
                        job.cancelled.set()
                self._tender.tick(jobs)
                self._done.wait(self._tender.pause())
        finally:
            self._tender.close()

    def _jobs_now(self) -> list[Job]:
        with self._changed:
            return list(self._jobs.values())

    def _gives_up(self, doing: str) -> bool:
        """Whether a call to a store that is away stops being retried: every call once the
        worker is told to stop at once; leasing once it is stopping."""
        return self._stop_now or (self._stopping and doing == "lease messages")


def _always() -> bool:
    return True
