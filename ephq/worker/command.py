"""Running a shell command as a message's handler.

The command runs through /bin/sh -c in a session of its own, so a timeout or a shutdown can stop
it and everything it started by signalling the process group; a guard (guard.py) kills the
groups still running if the worker dies. The message's data arrives on its stdin, exactly as
enqueued; facts about the delivery arrive in EPHQ_* variables, never on the command line. Its
stderr passes through to ours, and the tail is kept for the dead letter. Exit 0 is success,
exit 100 a permanent failure (the qmail convention), 126 and 127 (the shell could not run the
command: not executable, not found) a broken handler that stops the worker, anything else a
temporary failure.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

from ..durations import to_ns
from ..errors import BadInput
from ..message import Message
from .guard import TOKEN_VARIABLE, HandlerGuard
from .outcomes import Cancelled, HandlerBroken, PermanentFailure, TemporaryFailure
from .spawning import Spawn, spawner

PERMANENT_EXIT = 100
# The shell's own statuses for a command it could not run: not executable, not found.
CANNOT_RUN = {126: "not executable", 127: "not found"}
STDERR_TAIL_BYTES = 2000
# After SIGTERM, how long a handler's process group gets before SIGKILL.
KILL_AFTER_S = 2.0
_POLL_S = 0.05
_SLICE_S = 0.1
_PIPE_CAPACITY = 65536  # Linux's default pipe buffer
SHELL = "/bin/sh"


def _exit_watch(child: _Child) -> int | None:
    """A pidfd that becomes readable when child exits (Linux 5.3+), or None to poll instead."""
    try:
        return os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        return None


class _Child:
    """A handler's shell, reaped by us. Started by posix_spawn(3) (spawning.py), which costs
    about a tenth less per message than subprocess.Popen (no pipe for exec errors, no file
    objects)."""

    def __init__(self, pid: int, guard: HandlerGuard) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._guard = guard
        guard.started(pid)  # its pid is its process group's number (setsid)

    def poll(self) -> int | None:
        if self.returncode is None:
            # Seen exited but not reaped, so that its number is still its own when the guard
            # is told to forget it.
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return None
            self._guard.ending(self.pid)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> bool:
        """Whether it exited within timeout seconds."""
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True


# What a handler never inherits from its worker: the store is the worker's (set again from
# it), and the group and the guard's token are the message's and this worker's, or none.
_TOKEN_NAME = os.fsencode(TOKEN_VARIABLE)
_NOT_INHERITED = (b"EPHQ_HOME", b"EPHQ_URL", b"EPHQ_GROUP", _TOKEN_NAME)
_encode = functools.partial(
    str.encode, encoding=sys.getfilesystemencoding(), errors=sys.getfilesystemencodeerrors()
)


def _environment_now() -> dict[bytes, bytes]:
    """A copy of this process's environment as it is now, in bytes.

    os.environ keeps its bytes in a dict of its own, which it updates with every change; a
    copy of that costs half a microsecond, where a copy through os.environ (a Python call to
    decode each name and value) cost 23 µs for 35 variables, at every handler start. Where
    there is no such dict (another Python), the slow way.
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return dict(data)
    return dict(os.environb)


def _spawn(
    command: str, env: dict[bytes, bytes], guard: HandlerGuard, spawn: Spawn
) -> tuple[_Child, int, int]:
    """Start /bin/sh -c command in a session of its own, its stdin and stderr our pipes, its
    stdout ours; the child, and the fds of its stdin (to write) and stderr (to read)."""
    fds: list[int] = []
    try:
        for _ in range(2):
            read, write = os.pipe2(os.O_CLOEXEC)
            fds += [_above_stdio(read), _above_stdio(write)]
        stdin_read, stdin_write, stderr_read, stderr_write = fds
        pid = spawn(SHELL, (SHELL, "-c", command), env, ((stdin_read, 0), (stderr_write, 2)))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(stdin_read)
    os.close(stderr_write)
    return _Child(pid, guard), stdin_write, stderr_read


def _above_stdio(fd: int) -> int:
    """fd itself, or (when our own stdin, stdout or stderr was closed, so a pipe took its
    number) a copy numbered 3 or more: the child's dup2 onto 0 or 2 must not find it there."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


class CommandHandler:
    def __init__(
        self, command: str, *, store: dict[str, str], timeout: float | None = None
    ) -> None:
        if not command.strip():  # `sh -c ''` exits 0: every message acked, nothing run
            raise BadInput("the handler's command is empty: nothing would run, yet all acked")
        if timeout is not None:  # of none: every handler stopped as it starts, and retried
            to_ns(timeout, "timeout", allow_zero=False)
        self.command = command
        self.store = store  # EPHQ_HOME or EPHQ_URL: the store the handler's own ephq uses
        self.timeout = timeout
        self._running: set[_Child] = set()
        self._guard: HandlerGuard | None = None  # started with the first handler
        self._guard_lock = threading.Lock()
        self.on_notice: Callable[[str], None] | None = None
        self._spawn: Spawn = spawner(concurrent=False)

    def expect_concurrency(self, handlers: int) -> None:
        """Say how many handlers may run at once (the worker's concurrency): past one, each
        starts without holding the GIL, so that the others' threads go on meanwhile
        (spawning.py)."""
        self._spawn = spawner(concurrent=handlers > 1)

    def close(self) -> None:
        """Let the guard go: call once no handler runs (the worker has ended)."""
        with self._guard_lock:
            if self._guard is not None:
                self._guard.close()

    def _guarded(self) -> HandlerGuard:
        with self._guard_lock:
            if self._guard is None:
                self._guard = HandlerGuard()
                if self._guard.problem is not None and self.on_notice is not None:
                    self.on_notice(
                        f"{self._guard.problem}; handlers will outlive a worker that is killed"
                    )
            return self._guard

    def kill_all(self) -> None:
        """SIGKILL every running handler's process group at once (the worker is ending)."""
        for child in list(self._running):
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def __call__(self, message: Message, cancelled: threading.Event) -> None:
        self.start_handler(message, cancelled)()

    def start_handler(self, message: Message, cancelled: threading.Event) -> Callable[[], None]:
        """Start message's handler and return at once: what it returns waits for the handler to
        end and raises what its exit means, as calling this handler does. A worker running one
        handler at a time settles the last message and leases the next meanwhile."""
        guard = self._guarded()
        env = self._environment(message, guard)
        child, stdin, stderr_fd = _spawn(self.command, env, guard, self._spawn)
        self._running.add(child)
        data = message.data_json.encode()
        feeder = None
        stdin_ours = True  # until _feed has it: it closes stdin, whose number may then be reused
        try:
            stderr = _StderrTail(stderr_fd)
            if len(data) <= _PIPE_CAPACITY:
                stdin_ours = False
                _feed(stdin, data)  # fits in the pipe: cannot block, whatever the handler does
            else:
                feeder = threading.Thread(target=_feed, args=(stdin, data), daemon=True)
                feeder.start()
                stdin_ours = False
        except BaseException:
            # (No thread left to feed it: a process may start no more.) Nothing of it is left.
            if stdin_ours:
                with contextlib.suppress(OSError):
                    os.close(stdin)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(KILL_AFTER_S)
            self._end(child, stderr_fd)
            raise
        return functools.partial(self._finish, child, stderr, feeder, cancelled)

    def _finish(
        self,
        child: _Child,
        stderr: _StderrTail,
        feeder: threading.Thread | None,
        cancelled: threading.Event,
    ) -> None:
        try:
            why = self._wait(child, cancelled, stderr)
            if feeder is not None:
                feeder.join(timeout=5)
        finally:
            self._end(child, stderr.fd)
        self._verdict(child.returncode, why, stderr.tail())

    def _end(self, child: _Child, stderr_fd: int) -> None:
        self._running.discard(child)
        os.close(stderr_fd)

    def _environment(self, message: Message, guard: HandlerGuard) -> dict[bytes, bytes]:
        """The handler's environment, in bytes (what posix_spawn hands over)."""
        # The worker's environment is read once per handler start: a variable the worker's
        # own code sets later (a credential it refreshes) still reaches the handlers.
        env = _environment_now()
        for name in _NOT_INHERITED:
            env.pop(name, None)
        # Encoded here as os.fsencode does, without its checks: through it, building the
        # environment took 28 µs a handler, 14 µs this way.
        env.update((_encode(k), _encode(v)) for k, v in self.store.items())
        env[b"EPHQ_STREAM"] = _encode(message.stream)
        env[b"EPHQ_MESSAGE_ID"] = _encode(message.id)
        env[b"EPHQ_RECEIPT"] = _encode(message.receipt or "")
        env[b"EPHQ_ATTEMPT"] = b"%d" % message.attempts
        env[b"EPHQ_ENQUEUED_AT"] = _encode(message.enqueued_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        # What the queue knows beyond the data, as JSON: for a dead letter, "dead" with the
        # stream it died in, its attempts there and its last error.
        env[b"EPHQ_METADATA"] = _encode(json.dumps(message.metadata, separators=(",", ":")))
        if message.group is not None:  # (else not the worker's own, if it had one)
            env[b"EPHQ_GROUP"] = _encode(message.group)
        # What the handler starts inherits it: the guard kills what carries it (guard.py).
        # (A worker that is itself a handler's passes on its own, not its worker's: when that
        # worker dies, its guard kills this worker, whose guard kills these handlers.)
        if guard.problem is None:
            env[_TOKEN_NAME] = _encode(guard.token)
        return env

    def _wait(self, child: _Child, cancelled: threading.Event, stderr: _StderrTail) -> str | None:
        """Wait for the handler, copying its stderr as it comes (one thread, no other per
        message); stop its process group on timeout or cancellation."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        exited = _exit_watch(child)
        try:
            while True:
                # Woken at once by output or the exit (a pidfd, where there is one); every
                # slice to look at cancel and timeout.
                watched = [fd for fd in (exited, stderr.fd if stderr.open else None) if fd]
                if watched:
                    ready, _, _ = select.select(watched, [], [], _SLICE_S if exited else _POLL_S)
                    if stderr.open and stderr.fd in ready:
                        stderr.copy_available()
                elif exited is None:
                    time.sleep(_POLL_S)
                if child.poll() is not None:
                    stderr.copy_available()  # what it wrote before it exited
                    return None
                if cancelled.is_set():
                    _stop_group(child)
                    stderr.copy_available()
                    return "cancelled"
                if deadline is not None and time.monotonic() >= deadline:
                    _stop_group(child)
                    stderr.copy_available()
                    return "timeout"
        finally:
            if exited is not None:
                os.close(exited)

    def _verdict(self, code: int | None, why: str | None, stderr: bytes) -> None:
        detail = stderr.decode("utf-8", "replace").strip()
        suffix = f"; stderr: {detail}" if detail else ""
        if why == "cancelled":
            raise Cancelled("stopped by the worker's shutdown")
        if why == "timeout":
            raise TemporaryFailure(f"timed out after {self.timeout:g}s{suffix}")
        if code == 0:
            return
        if code in CANNOT_RUN:
            raise HandlerBroken(
                f"the handler could not be run: exit {code}, {CANNOT_RUN[code]}{suffix}"
            )
        if code == PERMANENT_EXIT:
            raise PermanentFailure(f"exit {code}{suffix}")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            raise TemporaryFailure(f"killed by {name}{suffix}")
        raise TemporaryFailure(f"exit {code}{suffix}")


def _feed(fd: int, data: bytes) -> None:
    """Write data to the handler's stdin and close it (blocking: the pipe is ours alone)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # the handler does not read its stdin (a broken pipe): its choice
    finally:
        os.close(fd)


class _StderrTail:
    """A handler's stderr: copied to ours as it comes, the last few kilobytes kept for the
    dead letter. Read without blocking: once the handler has exited, what its children may
    still write later is not waited for."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.open = True
        self._chunks: collections.deque[bytes] = collections.deque()
        self._kept = 0
        os.set_blocking(fd, False)

    def copy_available(self) -> None:
        while self.open:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.open = False
                return
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            self._chunks.append(chunk)
            self._kept += len(chunk)
            while self._kept - len(self._chunks[0]) >= STDERR_TAIL_BYTES:
                self._kept -= len(self._chunks.popleft())

    def tail(self) -> bytes:
        return b"".join(self._chunks)[-STDERR_TAIL_BYTES:]


def _stop_group(child: _Child) -> None:
    """SIGTERM the handler's whole process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, KILL_AFTER_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        if not child.wait(wait):
            continue
        # The shell is gone; its children may not be: make sure of the group.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
