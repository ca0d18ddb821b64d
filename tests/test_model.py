"""A stateful property test: the real queue against a small in-memory model of its semantics.

Hypothesis drives random enqueue, dequeue, ack, nack, release and extend calls with random
receipts (current and stale) and moves an injected clock; after every step the real queue must
agree with the model on what was leased, which receipts were honoured, and the counts.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ephq import LeaseLost, Queue
from tests.conftest import FakeClock, fresh_database

NS = 1_000_000_000
MAX_ATTEMPTS = 3


@dataclass
class Model:
    id: str
    data: int
    attempts: int = 0
    state: str = "ready"  # ready | delayed | inflight | dead | gone
    due: int = 0  # delayed: visible at; inflight: lease deadline
    receipt: str | None = None  # the delivery whose receipt is still good, if any


class QueueMachine(RuleBasedStateMachine):
    database_url: str | None = None  # set: the queue is on PostgreSQL, from an empty database

    def __init__(self) -> None:
        super().__init__()
        self.home = tempfile.mkdtemp(prefix="ephq-model-")
        self.clock = FakeClock()
        if self.database_url is None:
            self.q = Queue(self.home, clock=self.clock)
        else:
            self.q = Queue(url=fresh_database(self.database_url), clock=self.clock)
        self.q.configure("s", max_attempts=MAX_ATTEMPTS)
        self.messages: dict[str, Model] = {}
        self.receipts: list[str] = []
        self.counter = 0

    def teardown(self) -> None:
        self.q.close()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- the model's own bookkeeping ----------------------------------------------------

    def reap(self) -> None:
        now = self.clock.now_ns
        for m in self.messages.values():
            if m.state == "inflight" and m.due <= now:
                m.state = "dead" if m.attempts >= MAX_ATTEMPTS else "ready"
                if m.state == "dead":
                    m.receipt = None
            elif m.state == "delayed" and m.due <= now:
                m.state = "ready"

    def holder(self, receipt: str) -> Model | None:
        for m in self.messages.values():
            if m.receipt == receipt and m.state in ("inflight", "ready"):
                return m
        return None

    # -- rules --------------------------------------------------------------------------

    @rule(delay=st.sampled_from([0, 0, 0, 2, 5]), count=st.integers(1, 3))
    def enqueue(self, delay: int, count: int) -> None:
        for _ in range(count):
            self.counter += 1
            self.clock.advance(0.000001)
            message_id = self.q.enqueue("s", self.counter, delay=delay)
            state = "delayed" if delay else "ready"
            due = self.clock.now_ns + delay * NS
            self.messages[message_id] = Model(message_id, self.counter, state=state, due=due)

    @rule(visibility=st.sampled_from([1, 2, 5, 10]))
    def dequeue(self, visibility: int) -> None:
        self.reap()
        got = self.q.dequeue("s", visibility=visibility)
        ready = sorted(i for i, m in self.messages.items() if m.state == "ready")
        if not ready:
            assert got is None
            return
        expected = self.messages[ready[0]]
        assert got is not None and got.receipt is not None
        assert (got.id, got.data) == (expected.id, expected.data)
        expected.attempts += 1
        assert got.attempts == expected.attempts
        expected.state, expected.due = "inflight", self.clock.now_ns + visibility * NS
        expected.receipt = got.receipt
        self.receipts.append(got.receipt)

    @precondition(lambda self: self.receipts)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        receipt = data.draw(st.sampled_from(self.receipts))
        m = self.holder(receipt)
        try:
            self.q.ack("s", receipt)
        except LeaseLost:
            assert m is None
            return
        assert m is not None
        m.state, m.receipt = "gone", None

    @precondition(lambda self: self.receipts)
    @rule(data=st.data(), delay=st.sampled_from([0, 0, 3]), counts=st.booleans())
    def nack_or_release(self, data: st.DataObject, delay: int, counts: bool) -> None:
        receipt = data.draw(st.sampled_from(self.receipts))
        m = self.holder(receipt)
        try:
            if counts:
                self.q.nack("s", receipt, delay=delay, reason="model")
            else:
                self.q.release("s", receipt)
        except LeaseLost:
            assert m is None
            return
        assert m is not None
        m.receipt = None
        if not counts:
            m.attempts -= 1
            m.state = "ready"
        elif m.attempts >= MAX_ATTEMPTS:
            m.state = "dead"
        elif delay:
            m.state, m.due = "delayed", self.clock.now_ns + delay * NS
        else:
            m.state = "ready"

    @precondition(lambda self: self.receipts)
    @rule(data=st.data(), visibility=st.sampled_from([1, 4]))
    def extend(self, data: st.DataObject, visibility: int) -> None:
        receipt = data.draw(st.sampled_from(self.receipts))
        m = self.holder(receipt)
        try:
            self.q.extend("s", receipt, visibility)
        except LeaseLost:
            assert m is None
            return
        assert m is not None
        m.state, m.due = "inflight", self.clock.now_ns + visibility * NS

    @rule(seconds=st.sampled_from([0.5, 1, 2, 6]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def counts_agree(self) -> None:
        self.reap()
        stats = self.q.stats("s")
        by_state = {s: 0 for s in ("ready", "delayed", "inflight", "dead")}
        for m in self.messages.values():
            if m.state in by_state:
                by_state[m.state] += 1
        assert (stats.ready, stats.delayed, stats.inflight, stats.dlq) == (
            by_state["ready"],
            by_state["delayed"],
            by_state["inflight"],
            by_state["dead"],
        )

    @invariant()
    def store_checks_clean(self) -> None:
        assert self.q.check() == []


# Every step touches the disk, so a loaded CI machine can make Hypothesis call the generation
# "too slow"; that says nothing about the queue, so it must not fail the test.
QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueMachine.TestCase


def test_the_model_holds_on_postgresql(database_server: str) -> None:
    """The same machine, the same rules, on the PostgreSQL backend."""

    class OnPostgres(QueueMachine):
        database_url = database_server

    run_state_machine_as_test(
        OnPostgres,
        settings=settings(
            max_examples=60,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
