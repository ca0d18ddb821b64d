"""How a handler says what became of a message: return for success, or raise one of these.

Any other exception is a temporary failure too: the message is retried with backoff.
"""

from __future__ import annotations


class PermanentFailure(Exception):
    """The message can never succeed: dead-letter it now."""


class TemporaryFailure(Exception):
    """This attempt failed; retry after a backoff, until attempts run out."""


class Cancelled(Exception):
    """The worker stopped the handler while shutting down: give the message back uncounted."""


class HandlerBroken(Exception):
    """The handler cannot run at all (a command not found, or not executable): no message can
    succeed, so the worker gives this one back uncounted and stops, instead of spending every
    message's attempts on it."""
