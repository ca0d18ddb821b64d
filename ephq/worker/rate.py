"""Rate limits: how many handlers a worker may start per unit of time (`--rate 10/s`).

A token bucket that holds up to `number` tokens and gains `number` per `per_seconds`: it starts
full, so a worker may start a burst of up to `number` at once, then one every
`per_seconds / number` on average. The worker takes tokens before it leases, never while holding a
lease, so messages it cannot start yet stay visible to other workers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import NamedTuple

from ..errors import BadInput

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|m|h)", re.ASCII)


class Rate(NamedTuple):
    """`number` starts per `per_seconds`."""

    number: float
    per_seconds: float


def parse_rate(text: str, what: str = "--rate") -> Rate:
    """'10/s', '100/m', '1000/h' (or '5/10s'): a count per unit of time."""
    match = _TEXT.fullmatch(text.strip())
    if match is None:
        raise BadInput(
            f"{what} {text!r} is not a rate: use a count per unit, as in 10/s, 100/m, 1000/h"
        )
    count, multiple, unit = float(match[1]), float(match[2] or 1), match[3]
    per = multiple * _UNITS[unit]
    if count <= 0 or per <= 0:
        raise BadInput(f"{what} {text!r} must allow more than zero per unit of time")
    return Rate(count, per)


class TokenBucket:
    """Up to rate.number tokens, refilled continuously at rate.number per rate.per_seconds."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = max(1.0, rate.number)  # a rate below 1/unit still lets one through
        self.per_token = rate.per_seconds / rate.number
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) / self.per_token)
        self._at = now

    def available(self) -> int:
        """Whole tokens there are now."""
        self._refill()
        return int(self._tokens)

    def take(self, n: int) -> None:
        """Spend n tokens (the worker takes only what available() said it may)."""
        self._refill()
        self._tokens -= n

    def seconds_until_token(self) -> float:
        """How long until a whole token is there (0 if one is)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) * self.per_token)
