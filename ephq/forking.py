"""A Queue carried into a child by fork(2): what the child must not go on using as its parent's.

A Queue made before a fork (at import time under `gunicorn --preload`, or before a
multiprocessing pool with Linux's default 'fork' start) arrives in the child as a copy of the
parent's memory. Some of what it holds cannot be shared that way:

- database connections: the child would talk over the parent's sockets while the parent does,
  each reading the other's answers (a parent and three children draining one stream got
  IndexErrors, a dropped session and messages left leased);
- inotify descriptors, which both would read, each taking rings meant for the other;
- the lease keeper, whose thread did not come along: what the child leased would be noted for
  a thread that never runs (growing without end) and never announced;
- locks that another of the parent's threads held at the instant of the fork, which nobody in
  the child would ever release.

Each object holding such things registers here, and right after a fork the child tells each to
let go of them: it opens its own on first use, as a new process would. Nothing is closed for the
parent: closing a connection the parent shares ends the parent's session, and unlinking a file
the parent announces itself in unannounces it. What the child lets go of is kept referenced
(inherited()) and never used, so that no finalizer acts on it either.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol


class ForkAware(Protocol):
    def after_fork(self) -> None:
        """In the child, right after a fork: let go of what is the parent's."""


_registered: weakref.WeakSet[Any] = weakref.WeakSet()
_inherited: list[object] = []


def reset_in_children(obj: ForkAware) -> None:
    """Have obj.after_fork() called in every child forked from now on while obj lives."""
    _registered.add(obj)


def inherited(thing: object) -> None:
    """Keep, for this child's life and unused, something that was its parent's."""
    _inherited.append(thing)


def _in_child() -> None:
    for obj in list(_registered):
        obj.after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
