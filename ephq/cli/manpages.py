"""Man pages generated from the command tree itself, so they cannot drift from --help.

    python -m ephq.cli.manpages man/

writes ephq(1) and one page per command (ephq-enqueue(1), ephq-dlq-list(1), ...). A test
regenerates them and fails when the committed ones differ.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer.main

from .. import __version__
from .app import EXIT_CODES, build

DESCRIPTION = """\
ephq is a durable message queue for one host, made of plain files: no broker, no daemon. \
Scripts and cron jobs enqueue messages (any JSON document) into named streams; consumers lease \
them with a visibility timeout and ack them when done, nack them to retry, or extend the lease. \
Delivery is at-least-once and FIFO within a stream. A message delivered max-attempts times \
without an ack becomes a dead letter, kept with its error until it is redriven or purged.

Every message is one JSON file and every change of state is one atomic rename(2): a crash of \
any process at any point loses nothing that ephq said it had stored. Enqueues are flushed to \
disk before ephq prints their ids (unless --no-fsync).

Durations are written 250ms, 30s, 5m, 1h or 1d; a bare number is seconds."""

ENVIRONMENT = [
    (
        "EPHQ_HOME",
        "Where the streams live, as --home. Default: $XDG_DATA_HOME/ephq, "
        "that is ~/.local/share/ephq.",
    ),
    ("EPHQ_URL", "A postgresql:// URL, as --url: the streams live in that database."),
    ("EPHQ_NO_FSYNC", "When 1, as --no-fsync."),
    ("EPHQ_DEBUG", "When 1, as --debug: errors show a traceback."),
    ("NO_COLOR", "When set, tables drawn on a terminal have no colour."),
]

FILES = """\
One directory per stream under the home: ready/, delayed/ and inflight/ hold the messages in \
each state, in small trees keyed by time; tmp/ holds files being written and recycled files; \
dlq/ holds the dead letters in the same layout; stream.json holds the settings. File names \
carry every fact a scan needs: ids (enqueue time and random bits), deadlines, attempts. The \
home is created with mode 0700 and message files with 0600."""

EXAMPLES = [
    ("Enqueue a job from a script:", 'echo \'{"to": "ann@example.com"}\' | ephq enqueue email'),
    ("Enqueue many, all or none:", "ephq enqueue email --lines < batch.jsonl"),
    (
        "Lease one, do the work, ack it:",
        "m=$(ephq dequeue email --visibility 5m) || exit 0\n"
        "receipt=$(printf '%s' \"$m\" | jq -r .receipt)\n"
        'send-mail "$m" && ephq ack email "$receipt" || ephq nack email "$receipt" --delay 1m',
    ),
    ("See how deep every stream is:", "ephq stats"),
    ("Put every dead letter back:", "ephq dlq redrive email"),
]

ASSUMPTIONS = """\
One local file system with atomic rename(2) and working flock(2): not NFS. Handlers must be \
idempotent: a message can be delivered more than once."""


def roff(text: str) -> str:
    """Text made safe for roff: backslashes, hyphens and leading dots or quotes escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def paragraphs(text: str) -> str:
    return "\n.PP\n".join(roff(" ".join(p.split())) for p in text.split("\n\n") if p.strip())


def _header(name: str, summary: str) -> list[str]:
    return [
        f'.TH {name.upper()} 1 "" "ephq {__version__}" "ephq manual"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(summary)}",
    ]


def _params(command: Any, ctx: Any) -> list[str]:
    out: list[str] = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            label = param.make_metavar(ctx) if _takes_ctx(param) else param.make_metavar()
            text = getattr(param, "help", None) or ""
        else:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            label, text = record
        out += [".TP", f"\\fB{roff(label)}\\fR", roff(" ".join(text.split()))]
    return out


def _takes_ctx(param: Any) -> bool:
    import inspect

    return "ctx" in inspect.signature(param.make_metavar).parameters


def _usage(command: Any, ctx: Any) -> str:
    # Typer marks a required argument {STREAM}; a man page's synopsis writes it bare.
    pieces = [re.sub(r"^\{(.*)\}$", r"\1", p) for p in command.collect_usage_pieces(ctx)]
    return " ".join([ctx.command_path, *pieces])


def group_page(group: Any, ctx: Any) -> str:
    """The page of a group of commands (ephq-dlq): what it is for, and its commands."""
    name = ctx.command_path.replace(" ", "-")
    help_text = group.help or ""
    lines = _header(name, " ".join(help_text.split(". ")[0].rstrip(".").split()))
    lines += [".SH SYNOPSIS", f"\\fB{roff(ctx.command_path)}\\fR \\fICOMMAND\\fR [\\fIARGS\\fR]..."]
    lines += [".SH DESCRIPTION", paragraphs(help_text), ".SH COMMANDS"]
    pages = []
    for path, command in _walk(group, ctx):
        lines += [".TP", f"\\fB{roff(path)}\\fR", roff(" ".join((command.help or "").split()))]
        pages.append(path.replace(" ", "-"))
    lines += [".SH EXIT STATUS", paragraphs(EXIT_CODES), ".SH SEE ALSO"]
    lines.append(",\n".join(f"\\fB{p}\\fR(1)" for p in ["ephq", *pages]))
    return "\n".join(lines) + "\n"


def command_page(command: Any, ctx: Any, see_also: str) -> str:
    name = ctx.command_path.replace(" ", "-")
    help_text = command.help or ""
    summary = help_text.split("\n\n")[0].split(". ")[0].rstrip(".")
    lines = _header(name, " ".join(summary.split()))
    lines += [".SH SYNOPSIS", f"\\fB{roff(_usage(command, ctx))}\\fR"]
    lines += [".SH DESCRIPTION", paragraphs(help_text)]
    options = _params(command, ctx)
    if options:
        lines += [".SH OPTIONS", *options]
    lines += [".SH EXIT STATUS", paragraphs(EXIT_CODES), ".SH SEE ALSO", see_also]
    return "\n".join(lines) + "\n"


def main_page(group: Any, ctx: Any, pages: list[str]) -> str:
    lines = _header("ephq", "a durable local message queue on plain files")
    lines += [".SH SYNOPSIS", "\\fBephq\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]..."]
    lines += [".SH DESCRIPTION", paragraphs(DESCRIPTION)]
    lines += [".SH OPTIONS", *_params(group, ctx)]
    lines += [".SH COMMANDS"]
    for path, command in _walk(group, ctx):
        lines += [".TP", f"\\fB{roff(path)}\\fR", roff(" ".join((command.help or "").split()))]
    lines += [".SH ENVIRONMENT"]
    for var, text in ENVIRONMENT:
        lines += [".TP", f"\\fB{var}\\fR", roff(text)]
    lines += [".SH FILES", paragraphs(FILES), ".SH EXIT STATUS", paragraphs(EXIT_CODES)]
    lines += [".SH EXAMPLES"]
    for title, code in EXAMPLES:
        lines += [".PP", roff(title), ".PP", ".nf", ".RS 4", roff(code), ".RE", ".fi"]
    lines += [".SH ASSUMPTIONS", paragraphs(ASSUMPTIONS)]
    lines += [".SH SEE ALSO", ",\n".join(f"\\fB{p}\\fR(1)" for p in pages)]
    return "\n".join(lines) + "\n"


def _walk(group: Any, ctx: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for name, command in group.commands.items():
        sub = typer.Context(command, info_name=name, parent=ctx)
        if hasattr(command, "commands"):
            found += _walk(command, sub)
        else:
            found.append((sub.command_path, command))
    return found


def render_all() -> dict[str, str]:
    """Every page's file name and text."""
    group: Any = typer.main.get_command(build())
    ctx = typer.Context(group, info_name="ephq")
    commands = _walk(group, ctx)
    names = [path.replace(" ", "-") for path, _ in commands]
    names += [f"ephq-{word}" for word, c in group.commands.items() if hasattr(c, "commands")]
    pages = {"ephq.1": main_page(group, ctx, names)}
    for path, command in commands:
        parent = ctx
        for word in path.split()[1:-1]:
            parent = typer.Context(group.commands[word], info_name=word, parent=parent)
        sub = typer.Context(command, info_name=path.split()[-1], parent=parent)
        pages[path.replace(" ", "-") + ".1"] = command_page(command, sub, "\\fBephq\\fR(1)")
    for word, command in group.commands.items():
        if hasattr(command, "commands"):
            sub = typer.Context(command, info_name=word, parent=ctx)
            pages[f"ephq-{word}.1"] = group_page(command, sub)
    return pages


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for page in write(Path(sys.argv[1] if len(sys.argv) > 1 else "man")):
        print(page)
