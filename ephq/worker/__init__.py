"""Consuming a stream with a handler per message: the loop (loop.py), what it is built from
(job, settling, tending, outage, rate) and the shell handler (shell.py, command.py)."""

from .loop import Worker
from .outcomes import Cancelled, HandlerBroken, PermanentFailure, TemporaryFailure
from .settling import Outcome, Summary

__all__ = [
    "Cancelled",
    "HandlerBroken",
    "Outcome",
    "PermanentFailure",
    "Summary",
    "TemporaryFailure",
    "Worker",
]
