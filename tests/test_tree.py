"""The ready tree's upkeep and reading: an emptied leaf is removed soon after its slice ends, so
that a consumer refilling its head from the first leaf does not list a second's worth of them;
and a consumer lists the leaf it is consuming again before the whole tree, which bounds how long
a message returned to an earlier leaf by another process waits."""

from __future__ import annotations

from pathlib import Path

from ephq import Queue
from tests.conftest import FakeClock


def _leaves(home: Path) -> list[str]:
    ready = home / "s" / "ready"
    return sorted(str(p.relative_to(ready)) for p in ready.glob("*/*/*") if p.is_dir())


def test_an_emptied_ready_leaf_goes_a_tenth_of_a_second_after_its_slice(home: Path) -> None:
    clock = FakeClock()
    q = Queue(home, clock=clock, keep_leases=False)
    q.enqueue("s", "first")
    (first_leaf,) = _leaves(home)
    m = q.dequeue("s", visibility=30)
    assert m is not None and m.receipt
    q.ack("s", m.receipt)
    clock.advance(0.15)  # its slice (17 ms) ended 0.13 s ago at least; a second has not passed
    q.enqueue("s", "second")
    m = q.dequeue("s", visibility=30)  # refills its head: walks the leaves from the first
    assert m is not None and m.data == "second"
    assert first_leaf not in _leaves(home)
    assert len(_leaves(home)) == 1


def _deliveries(q: Queue, count: int) -> list[object]:
    got = []
    for _ in range(count):
        m = q.dequeue("s", visibility=30)
        assert m is not None and m.receipt
        q.ack("s", m.receipt)
        got.append(m.data)
    return got


def _returned_earlier(
    home: Path, clock: FakeClock, *, wait_s: float, by_another: bool = True
) -> list[object]:
    """A consumer takes "old" and then "new 1" from a later leaf; another Queue (another
    process's), or with by_another False the consumer itself, gives "old" back to its earlier
    leaf; "new 2" arrives in the consumer's leaf; the clock moves wait_s (back, if negative).
    What the consumer then receives, in order."""
    consumer = Queue(home, clock=clock, keep_leases=False)
    returner = Queue(home, clock=clock, keep_leases=False) if by_another else consumer
    consumer.enqueue("s", "old")
    clock.advance(1.0)
    consumer.enqueue("s", "new 1")
    old = consumer.dequeue("s", visibility=30)
    assert old is not None and old.data == "old" and old.receipt
    assert _deliveries(consumer, 1) == ["new 1"]
    returner.release("s", old.receipt)
    consumer.enqueue("s", "new 2")  # the same instant: the consumer's leaf
    clock.advance(wait_s)
    return _deliveries(consumer, 2)


def test_a_message_another_process_returns_earlier_is_seen_once_the_leaf_is_empty(
    home: Path,
) -> None:
    # The consumer lists the leaf it took "new 1" from again, not the whole tree: "old" comes
    # when that leaf is empty.
    assert _returned_earlier(home, FakeClock(), wait_s=0) == ["new 2", "old"]


def test_a_message_another_process_returns_earlier_is_seen_after_a_tenth_of_a_second(
    home: Path,
) -> None:
    assert _returned_earlier(home, FakeClock(), wait_s=0.11) == ["old", "new 2"]


def test_a_message_the_consumer_returns_itself_comes_first(home: Path) -> None:
    assert _returned_earlier(home, FakeClock(), wait_s=0, by_another=False) == ["old", "new 2"]


def test_a_clock_stepped_back_does_not_put_off_the_walk(home: Path) -> None:
    # The walk was due a tenth of a second after the last one: by this clock, in an hour.
    assert _returned_earlier(home, FakeClock(), wait_s=-3600) == ["old", "new 2"]
