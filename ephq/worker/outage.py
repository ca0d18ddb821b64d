"""Calls to a store that may be away for a while: a database restarting, a dropped connection.

A worker does not stop when its store goes away: each call is retried with backoff, with one
notice when it goes and one when it is back. Nothing is lost meanwhile: a lease that runs out
is delivered again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import Unavailable

# Retrying while the store is unavailable: the first pause, doubled up to the last.
OUTAGE_FIRST_PAUSE_S = 0.25
OUTAGE_MAX_PAUSE_S = 8.0
T = TypeVar("T")


class GaveUp(Exception):
    """The store stayed unavailable until the worker was told to stop."""


class Retrying:
    """notice: told each change, in one line. give_up(doing): whether to stop retrying, asked
    after each failed try (a worker stopping at once gives up everything; a worker stopping
    gives up leasing, not settling what it holds)."""

    def __init__(self, notice: Callable[[str], None], give_up: Callable[[str], bool]) -> None:
        self._notice = notice
        self._give_up = give_up

    def call(self, doing: str, call: Callable[[], T]) -> T:
        """call(), again and again while the store is unavailable, with backoff; GaveUp once
        give_up(doing) says so."""
        pause = OUTAGE_FIRST_PAUSE_S
        failing = False
        while True:
            try:
                result = call()
            except Unavailable as exc:
                if not failing:
                    self._notice(f"cannot {doing}, retrying until the store answers: {exc}")
                failing = True
                if self._give_up(doing):
                    raise GaveUp(f"the store is unavailable: {exc}") from None
                time.sleep(pause)
                pause = min(pause * 2, OUTAGE_MAX_PAUSE_S)
                continue
            if failing:
                self._notice("the store answers again")
            return result
