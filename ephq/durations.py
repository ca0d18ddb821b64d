"""Durations: the API takes seconds or timedelta; the CLI also takes 250ms, 30s, 5m, 1h or 1d.

Internally every instant and duration is an integer of nanoseconds, so file names and comparisons
never suffer float rounding.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .errors import BadInput

Duration = float | int | timedelta

NS_PER_SECOND = 1_000_000_000
_UNITS_NS = {
    "ms": 1_000_000,
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
    "d": 86400 * NS_PER_SECOND,
}
_TEXT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)?")
# A bound keeps deadlines inside the 16 hex digits of the file names (year 2554).
MAX_NS = 100 * 365 * 86400 * NS_PER_SECOND
_MAX_WHOLE_SECONDS = MAX_NS // NS_PER_SECOND


def to_ns(value: Duration, what: str, *, allow_zero: bool = True) -> int:
    """A duration given to the API, as nanoseconds; BadInput when negative or not a duration."""
    if type(value) is int and 0 <= value <= _MAX_WHOLE_SECONDS and (value or allow_zero):
        # The usual call (0, or whole seconds), every enqueue's and dequeue's: the product is
        # what the float arithmetic below gives (exact below 2**32 seconds), at a third of it.
        return value * NS_PER_SECOND
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise BadInput(f"{what} must be seconds or a timedelta, not {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise BadInput(f"{what} must be a finite duration of zero or more seconds, not {value!r}")
    ns = round(seconds * NS_PER_SECOND)
    if ns == 0 and not allow_zero:
        raise BadInput(f"{what} must be more than zero, not {value!r}")
    if ns > MAX_NS:
        raise BadInput(f"{what} must be at most 100 years, not {value!r}")
    return ns


def parse(text: str, what: str = "duration") -> float:
    """'250ms', '30s', '5m', '1h', '1d' or a bare number of seconds, as seconds."""
    match = _TEXT.fullmatch(text.strip())
    if match is None:
        raise BadInput(
            f"{what} {text!r} is not a duration: use a number of seconds or a unit, "
            "as in 250ms, 30s, 5m, 1h, 1d"
        )
    number, unit = match.groups()
    return float(number) * _UNITS_NS[unit or "s"] / NS_PER_SECOND
