"""The naming scheme: every fact a scan needs is in a file's name, never in its contents or mtime.

Instants are nanoseconds since the epoch written as 16 lowercase hex digits, so names sort in time.

    id        TTTTTTTTTTTTTTTTRRRRRRRR    enqueue time, then 32 random bits: ids sort in FIFO order
    ready     <id>.<attempts>             visible now; attempts = deliveries so far
              <id>.<attempts>.<token>     an expired lease: its receipt is good until re-leased
    delayed   <due>.<id>.<attempts>       invisible until <due> (delay on enqueue, nack with delay)
    inflight  <deadline>.<id>.<attempts>.<token>
                                          leased until <deadline>; <token> names this delivery
    receipt   the inflight name at lease time, with 'dlq:' before it for a dead letter's lease

Each state directory is a small tree whose levels are prefixes of the name's leading hex field
(see tree.py), so no directory grows with the depth of the queue.
"""

import re
from typing import NamedTuple

from ..ids import (
    DLQ_RECEIPT_PREFIX,
    ID_LENGTH,
    TIME_HEX,
    TIMED_NAME,
    IdSource,
    Receipt,
    TimedName,
    check_stream_name,
    format_receipt,
    id_time_ns,
    is_group_token,
    is_id,
    is_stream_name,
    lease_token,
    new_token,
    parse_receipt,
    parse_timed,
)

__all__ = [
    "DLQ_RECEIPT_PREFIX",
    "ID_LENGTH",
    "READY_NAME",
    "TIMED_NAME",
    "TIME_HEX",
    "IdSource",
    "ReadyName",
    "Receipt",
    "TimedName",
    "check_stream_name",
    "format_receipt",
    "id_time_ns",
    "is_group_token",
    "is_id",
    "is_stream_name",
    "lease_token",
    "new_token",
    "parse_ready",
    "parse_receipt",
    "parse_timed",
]

# re.ASCII: \d would also match other scripts' digits, which no name ephq writes holds.
_READY = re.compile(r"([0-9a-f]{24})\.(\d{1,9})(?:\.([0-9a-f]{8}))?", re.ASCII)
READY_NAME = _READY  # for counting by name alone (census.py)


class ReadyName(NamedTuple):
    """A visible message's file name."""

    id: str
    attempts: int
    token: str | None = None

    def __str__(self) -> str:
        if self.token is None:
            return f"{self.id}.{self.attempts}"
        return f"{self.id}.{self.attempts}.{self.token}"


def parse_ready(name: str) -> ReadyName | None:
    match = _READY.fullmatch(name)
    if match is None:
        return None
    return ReadyName(match[1], int(match[2]), match[3])
