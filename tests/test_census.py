"""stats counts by leaf, listing only leaves that changed (ephq/files/census.py): never stale."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ephq import Queue


def settle(home: Path) -> None:
    """Make every leaf look last changed an hour ago, as in a deep, old backlog."""
    hour_ago = time.time_ns() - 3600 * 10**9
    for dirpath, _, _ in os.walk(home / "s"):
        os.utime(dirpath, ns=(hour_ago, hour_ago))


def census(home: Path) -> Path:
    return home / "s" / "census"


def test_counts_follow_every_change_even_within_a_second(realq: Queue) -> None:
    ids = realq.enqueue_many("s", list(range(50)))
    assert realq.stats("s").ready == 50
    for m in realq.dequeue_many("s", 7):
        realq.ack("s", m.receipt or "")
    realq.enqueue("s", "one more", delay=60)
    s = realq.stats("s")
    assert (s.ready, s.delayed, s.inflight) == (43, 1, 0)
    held = realq.dequeue_many("s", 3)
    s = realq.stats("s")
    assert (s.ready, s.inflight) == (40, 3)
    assert [m.id for m in held] == ids[7:10]


def test_a_kept_count_is_used_until_its_leaf_changes(realq: Queue, home: Path) -> None:
    realq.enqueue_many("s", list(range(2000)))  # over two leaves at least
    settle(home)
    assert realq.stats("s").ready == 2000
    doc = json.loads(census(home).read_text())
    leaves = sorted(k for k in doc["leaves"] if k.startswith("ready/"))
    assert len(leaves) >= 2  # settled leaves are kept
    head, last = leaves[0], leaves[-1]
    doc["leaves"][last][1] += 1000  # a kept count is believed while its leaf's mtime holds
    census(home).write_text(json.dumps(doc))
    with Queue(home) as other:
        assert other.stats("s").ready == 3000
        for m in other.dequeue_many("s", 5):  # from the head leaf: only it is listed again
            other.ack("s", m.receipt or "")
        assert other.stats("s").ready == 2995
        settle(home)  # the tail leaf changes too (its mtime moves): listed again, right again
        assert other.stats("s").ready == 1995
    assert head != last


def test_a_damaged_or_linked_census_is_ignored(realq: Queue, home: Path, tmp_path: Path) -> None:
    realq.enqueue_many("s", list(range(30)))
    settle(home)
    realq.stats("s")
    census(home).write_text('{"v": 1, "leaves": {"ready/x": [1, -5, 7]}}')
    assert realq.stats("s").ready == 30
    census(home).write_text("garbage")
    assert realq.stats("s").ready == 30
    victim = tmp_path / "victim"
    victim.write_text("outside")
    census(home).unlink()
    census(home).symlink_to(victim)
    with Queue(home) as fresh:
        assert fresh.stats("s").ready == 30
    assert victim.read_text() == "outside"
    assert not census(home).is_symlink()
