"""Text from outside (a handler's stderr, a dead letter's error) made safe for one log line."""

from __future__ import annotations

# Control characters as escapes, so that what a handler wrote (a stack trace, a segfault's
# second line) stays on its message's one line; a backslash is doubled so that it can be told
# from them.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def one_line(text: str) -> str:
    return text.translate(_ESCAPES)
