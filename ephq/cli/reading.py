"""What the CLI reads: one JSON document (`enqueue`), or JSON Lines (`enqueue --lines`,
`import`, the receipts `ack -`, `nack -` and `release -` read), from a file or stdin.

Never more than a bound at once. One document is read to one byte past the stream's max size.
JSON Lines are read a line at a time, each to a bound: an input without line ends (/dev/zero,
a binary file, a log piped in by mistake) is refused when its first line passes the bound, not
read into memory whole, which took every gigabyte of the machine before the kernel killed it.
A whole input is all or nothing (one batch), so it is held in memory: it may be at most
MAX_INPUT_LINES lines and MAX_INPUT_BYTES.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import BadInput
from ..message import MAX_MESSAGE_BYTES

# The most JSON Lines one `enqueue --lines` or `import` takes: a batch is written all or
# nothing, and held whole meanwhile (several times its size once parsed, and a few hundred
# bytes a line more: 1.2 GB of one-character lines took 19 GB before the kernel killed it).
MAX_INPUT_BYTES = 1 << 30
MAX_INPUT_LINES = 1_000_000

# The longest line that holds one message and what is said about it (export's, dequeue's):
# its data, at most MAX_MESSAGE_BYTES, and the rest (a dead letter's error is cut to 16 KiB).
MESSAGE_LINE_LIMIT = MAX_MESSAGE_BYTES + (1 << 20)

_BOM = b"\xef\xbb\xbf"


def read_input(file: str | None, limit: int) -> tuple[bytes, str]:
    """The bytes of file (or stdin), at most limit of them (enough to know it is too long),
    and what to call it in an error."""
    with _opened(file) as (f, source):
        raw = f.read(len(_BOM))
        if raw == _BOM:  # an editor's byte order mark: JSON has none; RFC 8259 lets it go
            raw = b""
        return raw + f.read(max(limit - len(raw), 0)), source


def read_lines(file: str | None, line_limit: int, what: str) -> tuple[list[tuple[int, str]], str]:
    """The numbered lines of JSON Lines in file (or stdin) that hold something, and what to
    call it in an error; BadInput for a line over line_limit bytes (what: what it holds, for
    the error) or not UTF-8, or more than MAX_INPUT_LINES lines or MAX_INPUT_BYTES in all.

    By the JSON Lines rules: UTF-8, lines end with '\\n' (a '\\r' before it is part of the line
    ending), the last line may lack one. Only '\\n' ends a line: U+2028 and other characters
    that Python's splitlines() would also split on can stand inside a JSON string. A line of
    only JSON whitespace is skipped.
    """
    numbered: list[tuple[int, str]] = []
    total = 0
    with _opened(file) as (f, source):
        number = 0
        while raw := f.readline(line_limit + 2):  # + 2: its line ending
            number += 1
            total += len(raw)
            if total > MAX_INPUT_BYTES or number > MAX_INPUT_LINES:
                raise BadInput(
                    f"{source}: over {MAX_INPUT_LINES:,} lines or {MAX_INPUT_BYTES:,} bytes, the "
                    "most one batch takes: split it (split -l), each part all or nothing"
                )
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            body = raw.removesuffix(b"\n").removesuffix(b"\r")
            if len(body) > line_limit:
                raise BadInput(f"{source}, line {number}: over {line_limit:,} bytes, {what}")
            try:
                line = body.decode()
            except UnicodeDecodeError as exc:
                raise BadInput(f"{source}, line {number}: not UTF-8 text: {exc}") from None
            if line.strip(" \t\r"):
                numbered.append((number, line))
    return numbered, source


@contextmanager
def _opened(file: str | None) -> Iterator[tuple[BinaryIO, str]]:
    """file (or stdin, for None or -) open to read bytes, and what to call it in an error."""
    if file is None or file == "-":
        yield sys.stdin.buffer, "stdin"
        return
    try:
        with Path(file).open("rb") as f:
            yield f, file
    except FileNotFoundError:
        raise BadInput(f"{file}: no such file") from None
    except IsADirectoryError:  # (at the open, or at the first read)
        raise BadInput(f"{file}: is a directory, not a file of JSON") from None
    except PermissionError:
        raise BadInput(f"{file}: permission denied") from None
