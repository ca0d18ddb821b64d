"""Stopping `ephq worker`: SIGTERM and SIGINT become a stop, and the process always ends.

Python runs signal handlers only in the main thread, between bytecodes, so a main thread stuck in
a system call (a disk that does not answer) would never hear a signal. The C-level handler still
runs at once, in whichever thread the kernel picks, and writes the signal's number to the wakeup
fd (signal.set_wakeup_fd): a thread of our own reads it there and does the work.

- First SIGTERM or SIGINT: stop leasing; running handlers get `--grace` to finish, then are
  cancelled and their messages released (the worker loop does this).
- Second SIGINT: cancel at once; the worker exits with INTERRUPTED.
- A SIGINT that the worker was started ignoring stays ignored: a worker put in the background
  by a script (`ephq worker ... &`, no job control) is not stopped by the Ctrl-C meant for the
  script, as no other program would be (and as Python itself leaves it).
- If the worker has not ended OVERDUE_S after that (grace included), whatever it is doing, the
  watcher kills the handlers' process groups and ends the process with INTERRUPTED: the leases
  it held expire, and their messages are delivered again.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

INTERRUPTED = 130
# Past the grace: time for cancelled handlers to be stopped (command.KILL_AFTER_S) and their
# messages released.
OVERDUE_S = 3.0


def _heard(signum: int, frame: FrameType | None) -> None:
    """The main thread's handler: the watcher thread acts on the signal (see the module note)."""


class StopWatch:
    def __init__(
        self,
        stop: Callable[[bool], None],
        grace: float,
        on_overdue: Callable[[], None],
    ) -> None:
        self.interrupts = 0
        self._stop = stop
        self._grace = grace
        self._on_overdue = on_overdue
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        heeded = [signal.SIGTERM]
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            heeded.append(signal.SIGINT)
        self._handlers = {s: signal.signal(s, _heard) for s in heeded}
        self._thread = threading.Thread(target=self._watch, name="ephq-stop-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._read], [], [], wait)
            if not readable:
                self._on_overdue()
                os._exit(INTERRUPTED)
            try:
                heard = os.read(self._read, 64)
            except BlockingIOError:
                continue
            if not heard:
                return  # closed: the worker ended
            for signum in heard:
                if signum == signal.SIGINT:
                    self.interrupts += 1
                now = self.interrupts >= 2
                self._stop(now)
                end = time.monotonic() + OVERDUE_S + (0.0 if now else self._grace)
                deadline = end if deadline is None else min(deadline, end)

    def close(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)  # the watcher reads end-of-file and returns
        self._thread.join(timeout=5)
        os.close(self._read)
