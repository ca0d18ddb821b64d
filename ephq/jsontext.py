"""The JSON text a message may carry: parsed once on the way in, never deeper than readers go.

Python's JSON parser recurses once per level of nesting, within the interpreter's recursion
limit (1,000 frames, less whatever the caller's stack already holds). A message nested 900
levels deep would be taken from a shallow stack and then fail to parse in a consumer whose
stack is deeper: a message nobody could receive. So a message may nest at most MAX_NESTING
levels, as serde_json's default allows, far inside what any reader needs.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from typing import Any

from .errors import BadInput, InvalidJSON

MAX_NESTING = 128
_COMPACT = (",", ":")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string: its brackets do not count
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # an opening bracket 2, a closing 0


def json_of(data: Any) -> str:
    """The compact JSON text of a Python value given as a message's data."""
    try:
        text = json.dumps(data, separators=_COMPACT, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"message data is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    check_nesting(text)
    return text


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# json.loads(text, parse_constant=...) makes a decoder for every call: two thirds of what
# checking a small message cost (3.6 against 1.3 µs). One decoder, made once, does the same.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def checked_json(text: str | bytes) -> str:
    """The JSON text itself, stripped of surrounding space, once it is known to parse."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise BadInput(f"message is not UTF-8 text: {exc}") from None
    if not isinstance(text, str):
        raise BadInput(f"JSON text must be str or bytes, not {type(text).__name__}")
    text = text.strip(" \t\n\r")  # JSON's whitespace, no other: "\u00a01" is not JSON
    if not text:
        raise BadInput("message is empty: expected a JSON document")
    check_nesting(text)  # first: a text too deep for the parser is refused by name
    try:
        if text.startswith("\ufeff"):  # what json.loads says of it, which decode() does not
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise InvalidJSON(
            f"invalid JSON at {where}: {exc.msg}", exc.lineno, exc.colno, exc.msg
        ) from None
    except ValueError as exc:
        raise InvalidJSON(f"invalid JSON: {exc}", reason=str(exc)) from None
    return text


def check_nesting(text: str, around: int = 0) -> None:
    """BadInput if a message's data in text nests deeper than MAX_NESTING levels; around:
    the levels of what holds the data in text (an export's line: 1)."""
    # Counting brackets is quick and rules out all but a text with many of them. Only such a
    # text is measured, in C: its strings dropped, its brackets alone made steps of 2 (opening)
    # and 0 (closing), whose running sum less their number is the depth at each bracket. (A
    # walk of its tokens in Python cost four times json.loads on a 1 MB array of objects.)
    if text.count("[") + text.count("{") <= MAX_NESTING + around:
        return
    steps = _STRING.sub("", text).encode().translate(_STEPS, _NOT_BRACKETS)
    depths = map(operator.sub, itertools.accumulate(steps), itertools.count(1))
    if max(depths, default=0) > MAX_NESTING + around:
        raise _too_deep()


def _too_deep() -> BadInput:
    return BadInput(f"message data nests deeper than {MAX_NESTING} levels of arrays and objects")
