from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephq import Queue

START_NS = 1_800_000_000 * 1_000_000_000  # 2027-01-15, far from any real clock edge


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1_000_000_000)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def q(home: Path, clock: FakeClock) -> Iterator[Queue]:
    queue = Queue(home, clock=clock)
    yield queue
    queue.close()


@pytest.fixture
def realq(home: Path) -> Iterator[Queue]:
    queue = Queue(home)
    yield queue
    queue.close()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its contents: 'nothing changed' is snapshot equality."""
    files: dict[str, bytes] = {}
    if not root.exists():
        return files
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            files[str(path.relative_to(root))] = path.read_bytes()
    return files
