"""The entry point: runs the command tree and turns every expected failure into one line.

Usage errors from Typer (its boxed panels), ephq's own errors and a stdout that cannot be
written (output.py) alike become one line on stderr, ``ephq: <what is wrong>``, and the
documented exit status. --debug or EPHQ_DEBUG=1 re-raises instead, with the traceback.
"""

from __future__ import annotations

import gc
import os
import sys

import typer

from ..errors import EphqError
from .output import GuardedStdout, OutputFailed, ReaderGone, discard

INTERRUPTED = 130


def _debugging(args: list[str]) -> bool:
    return "--debug" in args or os.environ.get("EPHQ_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from .app import build

    real_stdout, sys.stdout = sys.stdout, GuardedStdout(sys.stdout)
    try:
        result = build(_command_named(args))(args=args, prog_name="ephq", standalone_mode=False)
        sys.stdout.flush()  # here, not at exit: a failure is this command's to report
    except typer.TyperException as exc:  # usage errors: bad option, missing argument, ...
        if _debugging(args):
            raise
        return _usage_error(exc)
    except ReaderGone:  # `ephq peek s | head -1`: the reader left, which is fine
        discard(real_stdout)
        return 0
    except EphqError as exc:
        if _debugging(args):
            raise
        print(f"ephq: {exc}", file=sys.stderr)
        if isinstance(exc, OutputFailed):  # what is still buffered cannot go either
            discard(real_stdout)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        return INTERRUPTED
    finally:
        sys.stdout = real_stdout
    return result if isinstance(result, int) else 0


# Options of the root that take a value: the word after them is not the command's name.
_ROOT_VALUE_OPTIONS = ("--home", "--url")


def _command_named(args: list[str]) -> str | None:
    """The command the arguments name, if any: the first word not an option of the root."""
    from .app import COMMANDS, GROUPS

    words = iter(args)
    for word in words:
        if word in _ROOT_VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS or word in GROUPS else None
    return None


def _usage_error(exc: typer.TyperException) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError":  # `ephq` or `ephq dlq` alone: show the help
        print(exc.format_message(), file=sys.stderr)
        return 2
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "ephq"
    message = " ".join(exc.format_message().split())  # Typer's messages can span lines
    hint = f" (see '{where} --help')" if ctx is not None else ""
    print(f"{where}: {message}{hint}", file=sys.stderr)
    code = getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 2


def run() -> None:
    # What the imports made (Typer, Click, ephq: tens of thousands of objects) lives until the
    # process ends. Frozen, it is out of the collector's sight: neither the collections during
    # a command nor the ones at exit walk it again. The collections at exit alone took about
    # 15 ms, a sixth of a short command's whole run (docs/benchmarks.md, "Start-up").
    gc.freeze()
    sys.exit(main())
