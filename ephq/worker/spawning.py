"""How a handler's process starts: posix_spawn(3), holding Python's lock or letting it go.

os.posix_spawn holds the GIL for the whole call, and glibc's posix_spawn returns only once the
child has exec'd (it starts it with CLONE_VFORK): ~180 µs a handler in which no other thread of
the worker runs. One handler at a time loses nothing by it; at concurrency 4, the other
threads' leases, acks and reaps queue behind every start (the worker ran fewer `true`s a second
than at concurrency 2). The same call made through ctypes lets the lock go while the child
starts (libc_spawn.py), but costs ~50 µs more CPU a start (its arguments are built in
Python): a worker uses it only when several handlers run at once (docs/benchmarks.md has the
runs).

Both start the child the same way: in a session of its own, with the signals Python ignores
(SIGPIPE, SIGXFSZ) at their defaults again and no signal blocked, as subprocess does, and with
the given descriptors duplicated onto the child's.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence

# (fd, target): the child gets fd as its descriptor number target.
Dups = Sequence[tuple[int, int]]
Spawn = Callable[[str, Sequence[str], dict[bytes, bytes], Dups], int]

RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def spawn_holding_gil(path: str, argv: Sequence[str], env: dict[bytes, bytes], dups: Dups) -> int:
    """Start path with argv and env through os.posix_spawn; the child's pid."""
    return os.posix_spawn(
        path,
        list(argv),
        env,
        file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in dups],
        setsid=True,
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )


def spawner(concurrent: bool) -> Spawn:
    """How to start handlers: through ctypes when several run at once (and this is Linux, where
    libc_spawn.py's flags hold, with a C library ctypes can load), else os.posix_spawn."""
    if not concurrent or not sys.platform.startswith("linux"):
        return spawn_holding_gil
    try:
        # Here, not above: ctypes costs a worker's start-up ~4 ms that one handler at a time
        # (every `ephq worker --drain` from cron at concurrency 1) has no use for.
        from .libc_spawn import LibcSpawn

        return LibcSpawn()
    except (ImportError, OSError, AttributeError, TypeError):  # no ctypes, libc or function
        return spawn_holding_gil
