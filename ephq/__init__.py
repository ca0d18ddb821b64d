"""ephq: a durable local message queue on plain files.

from ephq import Queue
q = Queue()
q.enqueue("email-queue", {"to": "a@example.com"})
m = q.dequeue("email-queue", visibility=30)
if m is not None:
    ...                      # do the work
    q.ack("email-queue", m.receipt)
"""

from .errors import (
    BadInput,
    DiskFull,
    EphqError,
    InvalidJSON,
    LeaseLost,
    NotFound,
    StorageError,
    StoragePermissionDenied,
    Unavailable,
)
from .message import CheckProblem, Lease, Message, StreamConfig, StreamStats
from .queue import Queue

__all__ = [
    "BadInput",
    "CheckProblem",
    "DiskFull",
    "EphqError",
    "InvalidJSON",
    "Lease",
    "LeaseLost",
    "Message",
    "NotFound",
    "Queue",
    "StorageError",
    "StoragePermissionDenied",
    "StreamConfig",
    "StreamStats",
    "Unavailable",
]
__version__ = "0.1.0"
