"""A real full disk and a real read-only file system, in a private mount namespace.

`unshare -m` gives the test its own tmpfs, small or read-only, without touching the machine's
mounts; where the sandbox does not allow it, these tests are skipped.
"""

from __future__ import annotations

import json
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


def test_a_textfile_on_a_full_disk_is_exit_6_and_keeps_the_old_one(tmp_path: Path) -> None:
    result = in_namespace(
        tmp_path,
        "export EPHQ_HOME={home}\n"
        "echo 1 | {ephq} enqueue s > /dev/null\n"
        "echo old > {home}/../ephq.prom\n"
        "dd if=/dev/zero of={home}/../fill bs=1k count=1024 2>/dev/null\n"
        '{ephq} metrics --textfile {home}/../ephq.prom; echo "status=$?"\n'
        "cat {home}/../ephq.prom\n"
        "ls -a {home}/..\n",
    )
    out = result.stdout.splitlines()
    assert out[:2] == ["status=6", "old"], result.stderr
    assert result.stderr.startswith("ephq: cannot write --textfile ")
    assert "the disk is full" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(out[2:]) == [".", "..", "ephq.prom", "fill", "home"]  # no temporary left


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


def test_a_worker_on_a_read_only_file_system_is_exit_5_in_one_line(tmp_path: Path) -> None:
    """The worker announces itself as it starts: on a read-only file system that fails, and it
    says so in one line and stops (it once died in its keeper thread, with a traceback)."""
    result = in_namespace(
        tmp_path,
        "export EPHQ_HOME={home}\n"
        "echo 1 | {ephq} enqueue s > /dev/null\n"
        "mount -o remount,ro {home}/..\n"
        '{ephq} worker s --exec true --drain; echo "status=$?"\n',
    )
    assert "status=5" in result.stdout.splitlines(), result.stderr
    assert "Traceback" not in result.stderr
    *summary, error = result.stderr.splitlines()
    assert summary == [
        "ephq worker: handled 0 (acked 0, retried 0, dead-lettered 0, released 0, lease lost 0)"
    ]
    assert error.startswith(
        "ephq: cannot register a worker of stream 's': the file system is read-only"
    )


FULL_DISK_DRIVER = r"""
import json, os, subprocess, sys
from ephq import DiskFull, Queue

ephq, mount = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mount], check=True)
home = os.path.join(mount, "home")
env = {**os.environ, "EPHQ_HOME": home}
out = {}

def cli(*args, stdin=""):
    done = subprocess.run([ephq, *args], input=stdin, capture_output=True, text=True, env=env)
    return done.returncode, done.stdout, done.stderr

def free():
    fs = os.statvfs(home)
    return fs.f_bavail * fs.f_frsize

with Queue(home, keep_leases=False) as q:  # its lease is handed to `ephq nack`
    q.configure("d", max_attempts=1)
    q.enqueue("d", "doomed")
    lease = q.dequeue("d")
    payload = "x" * 3000
    stored = 0
    try:
        while True:  # until the disk is full
            q.enqueue("s", payload)
            stored += 1
    except DiskFull:
        pass
out["stored"] = stored
out["free_when_full"] = free()
out["enqueue"] = cli("enqueue", "s", stdin='"one more"')
out["nack"] = cli("nack", "d", lease.receipt)  # its dead letter has no room: it waits in tmp/
out["dying"] = sorted(os.listdir(os.path.join(home, "d", "tmp")))
acked = 0
for _ in range(5):
    code, line, _ = cli("dequeue", "s")
    if code == 0 and cli("ack", "s", json.loads(line)["receipt"])[0] == 0:
        acked += 1
out["acked"] = acked
out["free_after_acks"] = free()
out["purge"] = cli("purge", "s", "--yes")
out["free_after_purge"] = free()
out["enqueue_after"] = cli("enqueue", "s", stdin='"room again"')[0]
out["stats_d"] = json.loads(cli("stats", "d", "--json")[1])
out["check"] = cli("check")
print(json.dumps(out))
"""


def test_a_full_disk_keeps_consumers_going_and_recovers_by_itself(tmp_path: Path) -> None:
    mount = tmp_path / "fs"
    mount.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER)
    done = subprocess.run(
        ["unshare", "-m", sys.executable, str(driver), EPHQ, str(mount)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["stored"] > 50
    code, _, err = out["enqueue"]
    assert code == 6 and err.startswith("ephq: cannot enqueue to stream 's': the disk is full")
    assert out["nack"] == [0, "", ""]  # the delivery ended; the dead letter waits for room
    assert [n for n in out["dying"] if n.endswith(".dying")], out["dying"]
    assert out["acked"] == 5  # consumers consume and ack on a full disk
    assert out["free_after_acks"] > out["free_when_full"]  # and acking gave space back
    assert out["purge"][0] == 0 and out["purge"][1].strip() == str(out["stored"] - 5)
    assert out["free_after_purge"] > 512 * 1024  # purge freed the messages and the pool
    assert out["enqueue_after"] == 0
    assert out["stats_d"]["dlq"] == 1  # the waiting dead letter was finished once there was room
    assert out["check"] == [0, "", ""]
