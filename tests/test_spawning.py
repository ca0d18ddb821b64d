"""Both ways of starting a handler's process start the same process (spawning.py)."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time

import pytest

from ephq.worker.spawning import Spawn, spawn_holding_gil, spawner

needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

# What the child reports of itself: its session, the signals it ignores and blocks (from
# /proc), its stdin, and one variable of its environment.
REPORT = (
    'echo "sid=$(cut -d" " -f6 /proc/$$/stat) pid=$$"; '
    'grep -E "^Sig(Ign|Blk)" /proc/self/status; '
    'echo "stdin=$(cat)"; echo "var=$EPHQ_TEST_VAR"; echo "path=${PATH:-none}" >&2'
)


def _run(spawn: Spawn, env: dict[bytes, bytes]) -> tuple[int, str, str]:
    """Start REPORT with our pipes on its stdin, stdout and stderr; its pid, stdout, stderr."""
    stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
    out_read, out_write = os.pipe2(os.O_CLOEXEC)
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    pid = spawn(
        "/bin/sh",
        ("/bin/sh", "-c", REPORT),
        env,
        ((stdin_read, 0), (out_write, 1), (err_write, 2)),
    )
    for fd in (stdin_read, out_write, err_write):
        os.close(fd)
    os.write(stdin_write, b"fed")
    os.close(stdin_write)
    with os.fdopen(out_read, "rb") as out, os.fdopen(err_read, "rb") as err:
        stdout, stderr = out.read().decode(), err.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    return pid, stdout, stderr


def _ignored_and_blocked(report: str) -> tuple[int, int]:
    fields = dict(line.split(":\t") for line in report.splitlines() if line.startswith("Sig"))
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


@needs_linux
@pytest.mark.parametrize("concurrent", [False, True])
def test_a_handler_starts_in_its_own_session_with_default_signals_and_our_pipes(
    concurrent: bool,
) -> None:
    spawn = spawner(concurrent=concurrent)
    assert (spawn is spawn_holding_gil) is not concurrent  # ctypes loads libc on Linux
    env = {b"EPHQ_TEST_VAR": b"caf\xc3\xa9 = x", b"PATH": b"/usr/bin:/bin"}
    pid, stdout, stderr = _run(spawn, env)
    lines = stdout.splitlines()
    assert lines[0] == f"sid={pid} pid={pid}"  # a session of its own, its leader
    ignored, blocked = _ignored_and_blocked(stdout)
    # Python ignores SIGPIPE and SIGXFSZ for itself; the handler gets them back at default.
    for reset in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (reset - 1)), f"{reset.name} still ignored"
    assert blocked == 0
    assert "stdin=fed" in lines
    assert "var=café = x" in lines
    assert stderr == "path=/usr/bin:/bin\n"  # exactly the environment given


@needs_linux
def test_both_ways_start_the_same_process_even_with_signals_masked_here() -> None:
    """A thread that blocks signals (as a worker's may) passes no mask on, either way."""
    env = {b"EPHQ_TEST_VAR": b"v"}
    reports = []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
    try:
        for concurrent in (False, True):
            _, stdout, _ = _run(spawner(concurrent=concurrent), env)
            reports.append(_ignored_and_blocked(stdout))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert reports[0] == reports[1]
    assert reports[1][1] == 0


@needs_linux
def test_a_command_that_cannot_start_is_an_os_error_naming_it() -> None:
    """Both raise the same error: what the worker says when it retries the message."""
    too_long = {b"BIG": b"x" * 200_000}  # one string past the kernel's 128 KiB: exec refuses
    for concurrent in (False, True):
        spawn = spawner(concurrent=concurrent)
        with pytest.raises(OSError) as raised:
            spawn("/nonexistent/sh", ("sh",), {}, ())
        assert raised.value.errno == errno.ENOENT
        assert str(raised.value) == "[Errno 2] No such file or directory: '/nonexistent/sh'"
        with pytest.raises(OSError) as raised:
            spawn("/bin/sh", ("/bin/sh", "-c", "true"), too_long, ())
        assert str(raised.value) == "[Errno 7] Argument list too long: '/bin/sh'"
    with pytest.raises(ValueError, match="null byte"):
        spawner(concurrent=True)("/bin/sh", ("sh", "-c", "true"), {b"A": b"x\0y"}, ())


@needs_linux
def test_a_concurrent_start_lets_other_threads_run_meanwhile() -> None:
    """The point of the ctypes path: while one thread starts a process, others run Python.

    A thread notes the time as fast as it can; each start is timed around the call. Holding
    the GIL through the call, no note can fall inside it; letting it go, the noting thread
    takes the GIL at once (it is always waiting for it) and notes while the child starts.
    Counted over 100 starts of each kind (here: 0 against 97-100, with or without three busy
    loops beside them on two CPUs)."""
    noted = [0.0]
    stop = threading.Event()

    def note() -> None:
        while not stop.is_set():
            noted[0] = time.perf_counter()
            time.sleep(0)  # lets the GIL go: the only way the other thread gets it back

    # No switch forced on a thread holding the GIL: only a call that lets it go lets the
    # noting thread in (a switch forced between the first timing and the call would let it
    # note inside, on a busy machine).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    noting = threading.Thread(target=note)
    noting.start()
    inside = {}
    # A long environment makes each start take longer (exec copies it): a wider window.
    env = {b"EPHQ_TEST_%d" % i: b"x" * 1000 for i in range(200)}
    try:
        for concurrent in (False, True):
            spawn = spawner(concurrent=concurrent)
            inside[concurrent] = 0
            for _ in range(100):
                began = time.perf_counter()
                pid = spawn("/bin/sh", ("/bin/sh", "-c", "exit 0"), env, ())
                ended = time.perf_counter()
                inside[concurrent] += began < noted[0] < ended
                os.waitpid(pid, 0)
    finally:
        stop.set()
        noting.join()
        sys.setswitchinterval(interval)
    assert inside[False] <= 5, inside
    assert inside[True] >= 50, inside
