"""Consuming a stream with a handler per message: the loop (loop.py) and the shell handler."""

from .loop import Outcome, Summary, Worker
from .outcomes import Cancelled, PermanentFailure, TemporaryFailure

__all__ = ["Cancelled", "Outcome", "PermanentFailure", "Summary", "TemporaryFailure", "Worker"]
