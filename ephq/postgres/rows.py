"""Rows as the API's messages: what a row of ephq.messages is to a caller, leased or looked at.

A row is read as a message only once it is one: ephq writes nothing else, but anyone who can
write to the database can (an INSERT by hand, from a trigger, by another tool), so its id, data
and metadata are checked as the file backend checks a file, and a row that fails is NotAMessage.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ..errors import BadInput
from ..ids import format_receipt, id_time_ns, is_id
from ..message import Message, live_metadata, utc_from_ns

NS = 1_000_000_000

# The columns a message is built from, in this order.
ROW = "m.id, m.attempts, m.visible_at, m.token, m.data, m.meta, m.grp"


class NotAMessage(Exception):
    """A row that is not a message ephq wrote; its argument says why."""


def vet(message_id: object, data: str, meta: object) -> Any:
    """The data a row holds, if the row is a message: NotAMessage if not."""
    if not isinstance(message_id, str) or not is_id(message_id):
        raise NotAMessage(f"its id {message_id!r} is not an id (24 hex digits)")
    if not isinstance(meta, dict) and meta is not None:
        raise NotAMessage(f"its metadata is {type(meta).__name__}, not an object")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise NotAMessage(f"its data is not JSON: {exc}") from None


def delivery(stream: str, row: Any, dead: bool) -> Message:
    """A message just leased, from its claim row, its fields given in order (this runs for
    every message dequeued); NotAMessage if the row is not one."""
    message_id, attempts, visible_at, token, data, meta, group = row
    value = vet(message_id, data, meta)
    if meta is None:  # the claim's NULL for the usual empty metadata
        meta = {}
    elif not dead:
        meta = live_metadata(meta, stream)
    lease = f"{visible_at:016x}.{message_id}.{attempts}.{token}"
    return Message(
        message_id,
        format_receipt(lease, dead),
        stream,
        value,
        data,
        attempts,
        utc_from_ns(id_time_ns(message_id)),
        utc_from_ns(visible_at),
        meta,
        None,
        group,
    )


def looked_at(stream: str, row: Any, dead: bool, state: str | None = None) -> Message:
    """A message looked at, not leased (peek, dead letters): no receipt; when it is due
    only when it is not ready. NotAMessage if the row is not one."""
    message_id, attempts, visible_at, _token, data, meta, group = row
    value = vet(message_id, data, meta)
    if not dead:
        meta = live_metadata(meta, stream)
    return Message(
        id=message_id,
        receipt=None,
        stream=stream,
        data=value,
        data_json=data,
        attempts=attempts,
        enqueued_at=utc_from_ns(id_time_ns(message_id)),
        visible_until=None if state in (None, "ready") else utc_from_ns(visible_at),
        metadata=meta,
        state=state,
        group=group,
    )


def dead_letter(stream: str, row: Any, now: int) -> Message:
    """A dead letter looked at, with its state: waiting to be retried, leased or ready."""
    visible_at, token = row[2], row[3]
    state = "ready" if visible_at <= now else "delayed" if token is None else "inflight"
    return looked_at(stream, row, True, state=state)


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def require_id(message_id: str) -> None:
    if not isinstance(message_id, str) or not is_id(message_id):
        raise BadInput(f"{message_id!r} is not a message id (24 hex digits, as enqueue prints)")
