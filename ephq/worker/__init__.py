"""Consuming a stream with a handler per message: the loop (loop.py) and the shell handler."""

from .loop import Outcome, Summary, Worker
from .outcomes import Cancelled, HandlerBroken, PermanentFailure, TemporaryFailure

__all__ = [
    "Cancelled",
    "HandlerBroken",
    "Outcome",
    "PermanentFailure",
    "Summary",
    "TemporaryFailure",
    "Worker",
]
