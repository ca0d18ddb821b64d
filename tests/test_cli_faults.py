"""A real full disk and a real read-only file system, in a private mount namespace.

`unshare -m` gives the test its own tmpfs, small or read-only, without touching the machine's
mounts; where the sandbox does not allow it, these tests are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EPHQ = str(Path(sys.executable).parent / "ephq")


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -m and mount")


def in_namespace(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    mount = tmp_path / "fs"
    mount.mkdir()
    full = f"set -u\nmount -t tmpfs -o size=256k,mode=0700 tmpfs {mount}\n" + script.format(
        ephq=EPHQ, home=mount / "home"
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", full], capture_output=True, text=True, check=False, timeout=60
    )


def test_disk_full_is_exit_6_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_text('"' + "x" * 400_000 + '"')
    result = in_namespace(
        tmp_path,
        "export EPHQ_HOME={home}\n"
        "echo 1 | {ephq} enqueue s > /dev/null\n"
        f'{{ephq}} enqueue s {tmp_path / "big.json"}; echo "status=$?"\n'
        "{ephq} stats s --json\n"
        "find {home}/s/tmp {home}/s/ready -type f | wc -l\n",
    )
    out = result.stdout.splitlines()
    assert "status=6" in out, result.stderr
    assert result.stderr.startswith("ephq: cannot enqueue to stream 's': the disk is full")
    assert result.stderr.count("\n") == 1
    assert '"ready":1' in out[1]  # the message stored before is unharmed, nothing partial added
    assert out[2] == "1"


def test_read_only_file_system_is_exit_5(tmp_path: Path) -> None:
    result = in_namespace(
        tmp_path,
        "export EPHQ_HOME={home}\n"
        "echo 1 | {ephq} enqueue s > /dev/null\n"
        "mount -o remount,ro {home}/..\n"
        '{ephq} dequeue s; echo "status=$?"\n',
    )
    assert "status=5" in result.stdout.splitlines(), result.stderr
    assert result.stderr.startswith(
        f"ephq: cannot dequeue from stream 's': the file system is read-only ({tmp_path}/fs/"
    )
    assert result.stderr.count("\n") == 1
