"""Generated docs are current: man pages match the command tree, and the README shows it all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ephq.cli.app import COMMANDS, DLQ_COMMANDS
from ephq.cli.manpages import render_all

ROOT = Path(__file__).resolve().parent.parent


def test_committed_man_pages_are_current() -> None:
    pages = render_all()
    committed = {p.name: p.read_text() for p in (ROOT / "man").glob("*.1")}
    stale = sorted(n for n in pages.keys() | committed.keys() if pages.get(n) != committed.get(n))
    assert not stale, f"regenerate with: python -m ephq.cli.manpages man  ({stale})"


def test_main_page_has_the_classic_sections() -> None:
    page = render_all()["ephq.1"]
    sections = [line[4:] for line in page.splitlines() if line.startswith(".SH ")]
    for wanted in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ):
        assert wanted in sections


def test_every_command_has_help_and_a_page() -> None:
    pages = render_all()
    expected = {f"ephq-{name}.1" for name in COMMANDS}
    expected |= {f"ephq-dlq-{name}.1" for name in DLQ_COMMANDS}
    assert set(pages) == expected | {"ephq.1", "ephq-dlq.1"}
    for name, text in pages.items():
        description = text.split(".SH DESCRIPTION\n", 1)[1].split("\n.SH", 1)[0]
        assert len(description.strip()) > 20, name


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_the_pages() -> None:
    for page in sorted((ROOT / "man").glob("*.1")):
        result = subprocess.run(
            ["man", "--warnings", "-l", str(page)],
            capture_output=True,
            text=True,
            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MANPAGER": "cat", "PAGER": "cat"},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", f"{page.name}: {result.stderr}"
        assert "NAME" in result.stdout


def test_readme_shows_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in render_all():
        if name == "ephq.1":
            continue
        command = name.removesuffix(".1").replace("-", " ")
        assert f"{command} " in readme, f"the README has no example of `{command}`"


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_pip_install_puts_the_man_pages_where_man_finds_them(tmp_path: Path) -> None:
    """`pip install` then `man ephq-dlq` works: the pages are data files under
    <prefix>/share/man/man1, which man finds beside the <prefix>/bin on PATH."""
    import sys

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("ephq-*.whl")
    prefix = tmp_path / "prefix"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",  # or pip uninstalls the ephq that runs these tests
            "-q",
            "--prefix",
            str(prefix),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {"PATH": f"{prefix}/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    for page in ("ephq", "ephq-dlq", "ephq-leases"):
        found = subprocess.run(
            ["man", "-w", page], capture_output=True, text=True, env=env, check=False
        )
        assert found.returncode == 0, found.stderr
        assert found.stdout.strip() == f"{prefix}/share/man/man1/{page}.1"


def test_every_error_the_readme_names_is_importable_from_ephq() -> None:
    """The README's hierarchy of errors is what a program catches: each is in ephq itself."""
    import re

    import ephq
    from ephq import errors

    readme = (ROOT / "README.md").read_text()
    hierarchy = readme[readme.index("Errors form one hierarchy") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", hierarchy)) - {"None", "True", "False"}
    defined = {name for name, value in vars(errors).items() if isinstance(value, type)}
    assert named and named <= defined, named - defined
    assert named <= set(ephq.__all__), named - set(ephq.__all__)
    assert all(getattr(ephq, name) is getattr(errors, name) for name in named)
