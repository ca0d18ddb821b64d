"""stats counts by leaf, listing only leaves that changed (ephq/files/census.py): never stale."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ephq import Queue
from ephq.files.groups import group_of


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


def test_a_groups_waiting_messages_are_counted_by_the_group(realq: Queue, home: Path) -> None:
    """A group's waiting messages are kept as one count per group, by the group directory's
    mtime: every join, leave and set-aside moves it, so the count is never stale, and an
    unchanged group is not listed again."""
    groups = [f"g{i % 5}" for i in range(40)]
    ids = realq.enqueue_many("s", list(range(40)), groups=groups)
    settle(home)
    s = realq.stats("s")
    assert s.ready == 40  # 5 heads out, 35 waiting
    doc = json.loads(census(home).read_text())
    kept = sorted(k for k in doc["leaves"] if k.startswith("groups/"))
    assert len(kept) == 5 and all(doc["leaves"][k][1] == 7 for k in kept)
    # A kept count is believed while its group's directory holds still.
    doc["leaves"][f"groups/{group_of('g0')}"][1] += 100
    doc["leaves"][f"groups/{group_of('g3')}"][1] += 1000
    census(home).write_text(json.dumps(doc))
    with Queue(home) as other:
        assert other.stats("s").ready == 1140
        head = other.dequeue("s")  # the oldest head: group g0's
        assert head is not None and head.id == ids[0]
        other.ack("s", head.receipt or "")  # g0's next comes out: its directory moves
        assert other.stats("s").ready == 1039  # g0 counted again; g3 still believed
        other.enqueue("s", "late", group="g3")  # joins g3, waiting: its directory moves
        assert other.stats("s").ready == 40
        settle(home)
        assert other.stats("s").ready == 40
        # A file set aside from a group's tree (here: a waiting name made a link) is a message
        # fewer, and its group counted again.
        g = next((home / "s" / "groups").iterdir())
        victim = next(p for p in (g / "w").rglob("*") if p.is_file())
        target = home.parent / "elsewhere"
        target.write_text("not ours")
        victim.unlink()
        victim.symlink_to(target)
        other.check(repair=True)
        assert other.stats("s").ready == 39
