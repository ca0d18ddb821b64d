"""Ids, lease tokens, receipts and stream names: the same in every backend.

id        TTTTTTTTTTTTTTTTRRRRRRRR    enqueue time (ns, 16 hex digits), then 32 random bits:
                                      ids sort in FIFO order
receipt   <deadline>.<id>.<attempts>.<token>, with 'dlq:' before it for a dead letter's
          lease: which delivery of which message (the file backend's inflight name)
"""

import os
import re
from typing import NamedTuple, TypeGuard

from .errors import BadInput

ID_LENGTH = 24
TIME_HEX = 16
_HEX16 = "[0-9a-f]{16}"
_ID = "[0-9a-f]{24}"
_TOKEN = "[0-9a-f]{8}"
# re.ASCII: \d would also match other scripts' digits, which no name ephq writes holds.
_TIMED = re.compile(rf"({_HEX16})\.({_ID})\.(\d{{1,9}})(?:\.({_TOKEN}))?", re.ASCII)
TIMED_NAME = _TIMED
DLQ_RECEIPT_PREFIX = "dlq:"


class TimedName(NamedTuple):
    """A delayed message (no token) or a lease (with the token of its delivery)."""

    at_ns: int
    id: str
    attempts: int
    token: str | None = None

    def __str__(self) -> str:
        base = f"{self.at_ns:016x}.{self.id}.{self.attempts}"
        return base if self.token is None else f"{base}.{self.token}"


def parse_timed(name: str) -> TimedName | None:
    match = _TIMED.fullmatch(name)
    if match is None:
        return None
    return TimedName(int(match[1], 16), match[2], int(match[3]), match[4])


def id_time_ns(message_id: str) -> int:
    return int(message_id[:TIME_HEX], 16)


def is_id(text: str) -> bool:
    return len(text) == ID_LENGTH and re.fullmatch(_ID, text) is not None


def new_token() -> str:
    return os.urandom(4).hex()


def lease_token(grouped: bool) -> str:
    """A lease's token: from the upper half of the token space for a message of a group, so
    that settling it knows from the receipt alone that its group must be released."""
    raw = bytearray(os.urandom(4))
    raw[0] = raw[0] | 0x80 if grouped else raw[0] & 0x7F
    return raw.hex()


def is_group_token(token: str | None) -> bool:
    return token is not None and token[:1] in ("8", "9", "a", "b", "c", "d", "e", "f")


class IdSource:
    """Ids from one process are strictly increasing even when the clock stalls or steps back."""

    def __init__(self) -> None:
        self._last_ns = 0

    def next(self, now_ns: int) -> str:
        self._last_ns = max(now_ns, self._last_ns + 1)
        return f"{self._last_ns:016x}{os.urandom(4).hex()}"


class Receipt(NamedTuple):
    """A parsed receipt: which delivery of which message, and whether it is a dead letter's;
    name is the lease as the receipt spells it (what str(lease) would give, without its
    cost)."""

    lease: TimedName
    dead: bool
    name: str


def parse_receipt(receipt: str) -> Receipt:
    if not isinstance(receipt, str):
        raise BadInput(f"a receipt is a string from dequeue, not {type(receipt).__name__}")
    dead = receipt.startswith(DLQ_RECEIPT_PREFIX)
    name = receipt[len(DLQ_RECEIPT_PREFIX) :] if dead else receipt
    lease = parse_timed(name)
    if lease is None or lease.token is None:
        raise BadInput(f"{receipt!r} is not an ephq receipt (it comes from dequeue, as 'receipt')")
    return Receipt(lease, dead, name)


def format_receipt(lease_name: str, dead: bool) -> str:
    """The receipt of the lease whose file is named lease_name."""
    return DLQ_RECEIPT_PREFIX + lease_name if dead else lease_name


STREAM_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # (also the database's, postgres/schema.py)
_STREAM = re.compile(STREAM_NAME)


def is_stream_name(name: object) -> TypeGuard[str]:
    """Whether name is one a stream may have (what check_stream_name lets through)."""
    return isinstance(name, str) and _STREAM.fullmatch(name) is not None


def check_stream_name(stream: object) -> str:
    """The name itself, or BadInput before anything touches the disk."""
    if not is_stream_name(stream):
        raise BadInput(
            f"invalid stream name {stream!r}: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return stream
