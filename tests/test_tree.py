"""The ready tree's upkeep: an emptied leaf is removed soon after its slice ends, so that a
consumer refilling its head from the first leaf does not list a second's worth of them."""

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
