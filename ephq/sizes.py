"""Sizes on the command line: a number of bytes, or one with a unit (512KiB, 1MiB, 64M)."""

from __future__ import annotations

import re

from .errors import BadInput

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
}
_TEXT = re.compile(r"(\d+)\s*([a-z]*)", re.ASCII)


def parse(text: str, what: str = "size") -> int:
    """'65536', '512KiB', '1MiB', '1M' (binary), '1MB' (decimal), as bytes."""
    match = _TEXT.fullmatch(text.strip().lower())
    if match is None or match[2] not in _UNITS:
        raise BadInput(
            f"{what} {text!r} is not a size: use a number of bytes or a unit, as in 512KiB, "
            "1MiB, 8M"
        )
    return int(match[1]) * _UNITS[match[2]]


def text(size: int) -> str:
    """A size the way people write it: 1MiB, 512KiB, or bytes."""
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
