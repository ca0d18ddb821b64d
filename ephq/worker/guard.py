"""Handlers end with their worker, even when it is killed with SIGKILL.

A handler runs in a session of its own (so that a timeout can stop everything it started), so
nothing the kernel does when the worker dies reaches it. Left running, it would still be working
on a message that the worker's death has just given back: another worker would get the message
within a second and run it a second time, at once. So each worker that runs commands starts a
guard: a small process, in a session of its own too, blocked reading a pipe that only the worker
holds open. When the read returns end of file, the worker is gone, however it died: the guard
SIGKILLs the process groups in its table, then every process that carries the worker's token,
and exits. A worker that ends cleanly writes a byte first: then the guard kills nothing.

The table is a memory file both hold (memfd_create), one 8-byte slot per running handler: the
worker writes a handler's process group into a free slot when it starts, and zero when it has
exited but is not yet reaped (while that number cannot belong to anyone else), each with one
pwrite. The guard reads it only once the worker is dead, so it never wakes while the worker
lives (a pipe carrying each start and end would wake it twice a message).

The token (TOKEN_VARIABLE in each handler's environment, which what it starts inherits) covers
what the table cannot: a handler started in the instant before its slot was written, and a
process a handler put in a session of its own (setsid). The guard finds them in
/proc/<pid>/environ (Linux; elsewhere only the table), looking again until a look finds none,
so that what forked meanwhile is found too.

The guard is `python -I -S -c GUARD_CODE ephq-handler-guard TOKEN` (the word marks it in `ps`),
about 15 ms once per worker. A fork of the worker would be cheaper, but it would inherit the
worker's open files, among them the lock and the database session that announce its leases
(keeping.py), which must end when the worker dies.
"""

from __future__ import annotations

import os
import sys
import threading

MARK = "ephq-handler-guard"

TOKEN_VARIABLE = "EPHQ_HANDLER_GUARD"
# Looks through /proc at most this many times: a process that forks faster than it is killed
# cannot keep the guard from exiting.
_LOOKS = 8
FAREWELL = b"."

# Runs alone in a fresh interpreter (-I -S): only os, signal and sys. fd 0 is the pipe, fd 3 the
# table; its arguments are the mark, the token's variable as it appears in an environment, and
# how often to look. A byte b"." (FAREWELL) before end of file is a clean end.
GUARD_CODE = """
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)  # the worker's stop is not the guard's: it ends at EOF
clean = False
while True:
    try:
        got = os.read(0, 1)
    except InterruptedError:
        continue
    if not got:
        break
    clean = got == b"."
if clean:
    sys.exit(0)
table = os.pread(3, os.fstat(3).st_size, 0)
for at in range(0, len(table) - 7, 8):
    group = int.from_bytes(table[at:at + 8], 'little')
    if group > 1:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
needle = b"\\0" + sys.argv[2].encode() + b"\\0"
me = os.getpid()
for _ in range(int(sys.argv[3])):
    found = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        break
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle not in b"\\0" + env:
            continue
        found += 1
        pid = int(name)
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if not found:
        break
"""


class HandlerGuard:
    """The worker's side: the pipe's write end and the table. If the guard cannot be started
    the worker runs on without it (`problem` says why), as it did before guards existed."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self._pipe: int | None = None
        self._table: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()  # handler threads start and end at once
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._slots = 0
        self.token = os.urandom(16).hex()  # TOKEN_VARIABLE's value in each handler's environment
        fds: list[int] = []
        try:
            self._table = _memory_file()
            read, self._pipe = os.pipe2(os.O_CLOEXEC)
            fds = [read]
            self._pid = os.posix_spawn(
                sys.executable,
                [
                    *(sys.executable, "-I", "-S", "-c", GUARD_CODE, MARK),
                    *(f"{TOKEN_VARIABLE}={self.token}", str(_LOOKS)),
                ],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, self._table, 3),
                ],
                setsid=True,  # a signal to the worker's process group is not for it
            )
        except (OSError, AttributeError, NotImplementedError) as exc:
            # (AttributeError, NotImplementedError: a platform without posix_spawn's setsid)
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.problem = f"cannot start the handler guard ({sys.executable}): {why}"
            self._close_own()
        finally:
            for fd in fds:
                os.close(fd)

    def started(self, group: int) -> None:
        if self._table is None:
            return
        with self._lock:
            slot = self._free.pop() if self._free else self._new_slot()
            self._slot_of[group] = slot
        os.pwrite(self._table, group.to_bytes(8, "little"), slot * 8)

    def ending(self, group: int) -> None:
        """The group's leader has exited and is not yet reaped."""
        with self._lock:
            slot = self._slot_of.pop(group, None)
        if slot is None or self._table is None:
            return
        os.pwrite(self._table, bytes(8), slot * 8)
        with self._lock:
            self._free.append(slot)  # only once zeroed: a new group must not be overwritten

    def _new_slot(self) -> int:
        self._slots += 1
        return self._slots - 1

    def close(self) -> None:
        """Let the guard go, killing nothing (every handler has ended; what they left running
        in the background is theirs), and reap it."""
        pid, self._pid = self._pid, None
        if self._pipe is not None:
            try:
                os.write(self._pipe, FAREWELL)
            except OSError:
                pass  # the guard is gone already: nothing to tell
        self._close_own()
        if pid is not None:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def _close_own(self) -> None:
        with self._lock:
            for fd in (self._pipe, self._table):
                if fd is not None:
                    os.close(fd)
            self._pipe = self._table = None


def _memory_file() -> int:
    """A file in memory (or, without memfd_create, a temporary file already unlinked): the
    table."""
    try:
        return os.memfd_create("ephq-handler-guard", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile  # here: only where memfd_create is missing

        fd, path = tempfile.mkstemp(prefix="ephq-handler-guard-")
        os.unlink(path)
        return fd
