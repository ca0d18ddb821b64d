"""The `ephq` command tree. Each command is a thin shell over the Queue API: no queue logic here,
and each lives in the module of its kind (produce, consume, look, manage, dead, work, metrics).

Output contract: ids, messages and stats are printed for programs (one id, or one JSON object,
per line); tables and colour appear only on a terminal. Errors are one line on stderr with the
exit codes in EXIT_CODES, printed by main.py.
"""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BadInput
from .params import Settings

EXIT_CODES = """\
Exit status: 0 success; 1 nothing to dequeue or peek at (stdout stays empty); 2 usage error or
bad input (nothing was written); 3 the receipt's lease is lost; 4 not found (a stream, or a dead
letter's id); 5 permission denied; 6 disk full; 7 other storage failure, or stdout cannot be
written; 8 check found problems it did not repair; 9 the worker's handler cannot be run (the
shell's exit 126 or 127); 10 the database (--url) cannot be reached; 130 interrupted (Ctrl-C; a
worker stopped by a second one, or unable to stop within --grace)."""


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # only here: it costs start-up

        print(f"ephq {version('ephq')}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="EPHQ_HOME",
            metavar="DIR",
            help="Where the streams live. Default: the user data directory (~/.local/share/ephq).",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="EPHQ_URL",
            metavar="URL",
            help="A postgresql:// URL: the streams live in that database (pip install "
            "'ephq[postgres]'). --home (given on the command line) wins over EPHQ_URL.",
        ),
    ] = None,
    no_fsync: Annotated[
        bool,
        typer.Option(
            "--no-fsync",
            envvar="EPHQ_NO_FSYNC",
            help="Do not flush enqueues to disk: faster, but a power loss may lose recent ones.",
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="EPHQ_DEBUG", help="Show a traceback on errors."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print ephq's version and exit.",
        ),
    ] = False,
) -> None:
    del debug, version  # read by main() before the command runs; printed by its callback
    if url is not None and home is not None:
        url_given = _on_command_line(ctx, "url")
        home_given = _on_command_line(ctx, "home")
        if url_given and home_given:
            raise BadInput("give --home or --url, not both")
        if home_given:
            url = None  # an explicit --home beats EPHQ_URL
        else:
            home = None  # --url or EPHQ_URL beats EPHQ_HOME
    ctx.obj = Settings(home, url, fsync=not no_fsync)


def _on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given on the command line (not by its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


# -- the tree ------------------------------------------------------------------------------

# Each command's module and function. A module is imported only when its command is built, so
# a run of one command loads one module and has Typer read one module's annotations.
COMMANDS: dict[str, tuple[str, str]] = {
    "enqueue": ("produce", "enqueue"),
    "dequeue": ("consume", "dequeue"),
    "ack": ("consume", "ack"),
    "nack": ("consume", "nack"),
    "release": ("consume", "release"),
    "extend": ("consume", "extend"),
    "peek": ("look", "peek"),
    "stats": ("look", "stats"),
    "leases": ("look", "leases"),
    "metrics": ("metrics", "metrics_command"),
    "config": ("manage", "config"),
    "purge": ("manage", "purge"),
    "check": ("manage", "check"),
    "worker": ("work", "worker"),
    "export": ("transfer", "export"),
    "import": ("transfer", "import_command"),
}
DLQ_COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("dead", "dlq_list"),
    "show": ("dead", "dlq_show"),
    "redrive": ("dead", "dlq_redrive"),
    "purge": ("dead", "dlq_purge"),
}
GROUPS = {"dlq": "Inspect, redrive and purge a stream's dead letters."}


def build(only: str | None = None) -> typer.Typer:
    """The command tree; with only, just that command (or group) under the root.

    Typer converts every command's parameters each time a tree is built, which costs
    milliseconds per run of a command that scripts call in loops; building only the command
    being run keeps that off the hot path. Help and man pages use the whole tree.
    """
    app = typer.Typer(
        name="ephq",
        help="A durable local message queue on plain files: enqueue jobs from scripts, consume "
        "them with leases, acks and dead letters. No broker.",
        epilog=EXIT_CODES,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    for name, where in COMMANDS.items():
        if only in (None, name):
            app.command(name)(_function(where))
    if only in (None, "dlq"):
        dlq = typer.Typer(help=GROUPS["dlq"], no_args_is_help=True, rich_markup_mode=None)
        for name, where in DLQ_COMMANDS.items():
            dlq.command(name)(_function(where))
        app.add_typer(dlq, name="dlq")
    return app


def _function(where: tuple[str, str]) -> Callable[..., None]:
    module, name = where
    command: Callable[..., None] = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    return command
