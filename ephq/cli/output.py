"""stdout while a command runs: a failed write is one line and an exit status, not a
traceback."""

from __future__ import annotations

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
        self._real = real

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
