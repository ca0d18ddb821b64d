"""stdout while a command runs: a failed write is one line and an exit status, not a
traceback."""

from __future__ import annotations

import errno
import os
from typing import Any

from ..errors import EphqError, StorageError


class OutputFailed(StorageError):
    """stdout could not be written (a full disk under a redirection, an I/O error)."""


class ReaderGone(EphqError):
    """stdout is a pipe whose reader has left (`ephq peek s | head -1`): nothing more to say."""

    exit_code = 0


class GuardedStdout:
    """sys.stdout while a command runs: a write or flush that fails is an ephq error with one
    line and its exit status, never a traceback, however the command writes (print, Rich)."""

    def __init__(self, real: Any) -> None:
        # None: started with descriptor 1 closed (`ephq enqueue s >&-`), so Python has no
        # stdout at all; writing to it fails like writing to any stdout that cannot be written.
        self._real = _Closed() if real is None else real

    def write(self, text: str) -> int:
        try:
            return int(self._real.write(text))
        except OSError as exc:
            raise _output_error(exc) from None

    def flush(self) -> None:
        try:
            self._real.flush()
        except OSError as exc:
            raise _output_error(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _output_error(exc: OSError) -> EphqError:
    if isinstance(exc, BrokenPipeError):
        return ReaderGone("the reader of stdout has left")
    return OutputFailed(f"cannot write to stdout: {exc.strerror or exc}")


class _Closed:
    """What stands for a stdout that was closed before ephq started."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "it is closed")

    def flush(self) -> None:
        pass  # nothing was written, so nothing waits

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "it is closed")

    def isatty(self) -> bool:
        return False


def discard(stream: Any) -> None:
    """Point stream's descriptor at /dev/null: what is still buffered for it goes nowhere, and
    the interpreter's flush at exit cannot fail again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # no descriptor (closed from the start): nothing to point anywhere
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
