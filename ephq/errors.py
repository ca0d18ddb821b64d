"""The one small hierarchy of errors ephq raises, each carrying the CLI exit code it maps to.

"Nothing to dequeue" is not an error: the API returns None or an empty list (exit 1 in the CLI).
"""

from __future__ import annotations


class EphqError(Exception):
    """Base of every error ephq raises on purpose; ``exit_code`` is the CLI's exit status."""

    exit_code = 4


class BadInput(EphqError):
    """The caller passed something ephq cannot accept; nothing was written."""

    exit_code = 2


class InvalidJSON(BadInput):
    """Text given as a message is not JSON; says where, as the parser saw it."""

    def __init__(self, message: str, line: int = 0, column: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.line, self.column, self.reason = line, column, reason


class LeaseLost(EphqError):
    """The receipt's delivery has ended: acked, nacked, re-leased after expiry, or dead-lettered."""

    exit_code = 3


class NotFound(EphqError):
    """A named thing (a dead letter's id, a stream) does not exist."""

    exit_code = 4


class StoragePermissionDenied(EphqError):
    """The operating system refused access to the queue's files."""

    exit_code = 5


class DiskFull(EphqError):
    """The file system is out of space or inodes; nothing partial was made visible."""

    exit_code = 6


class StorageError(EphqError):
    """Any other failure of the underlying storage."""

    exit_code = 7


class Unavailable(StorageError):
    """The database cannot be reached (down, restarting, the connection dropped); nothing the
    caller was told is done was lost, and trying again later is the remedy."""

    exit_code = 10
