"""The part of `check` that reads every message: which files of a leaf hold, whole, the message
their names name. At a million messages it is nearly all of check's time, so a large stream's
leaves are shared out between this process and a helper process per further CPU.

To vouch for a file is only to say it is exactly as ephq writes it: its name one a message of its
state has, in the leaf its key belongs in, a regular file no larger than a record, that parses
as a record holding the id its name gives. Whatever is not vouched for, for whatever reason (a
race with a consumer, a link, a file that changed while it was read), check looks at again on
its own in this process, which reports and repairs. So a helper that fails or lies in the other
direction costs time, never a finding: a helper that cannot start, dies or answers nonsense has
its share read here instead.

A helper is `python -I -c HELPER_CODE <directory holding ephq>`: isolated from the environment
and the current directory, importing the same ephq as this process. It is given a leaf at a
time as a pickle on stdin and answers each with a pickle on stdout. Starting it costs about
0.1 s (the interpreter and the package), worth it only for a large stream.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import subprocess
import sys
import threading
from typing import IO

from ..ids import ID_LENGTH, TIME_HEX
from .fsio import read_bounded
from .names import READY_NAME, TIMED_NAME
from .record import MAX_RECORD_BYTES, CorruptRecord, record_id

# A leaf to read: (state, the key prefix its directories spell, its path).
Leaf = tuple[str, str, str]
# What a leaf holds: its names, sorted, and for each the id its file holds if vouched for.
Listed = tuple[list[str], list[str | None]]

# Below this many files left to read, this process reads them all (~10 us a file, against the
# ~0.1 s a helper takes to start).
SHARE_FROM = 50_000
# False: helpers are started at once and read every leaf, this process only those they did not
# answer (the tests' way to see a helper's answers used, and not used).
READ_HERE = True
_MAX_HELPERS = 3
_AHEAD = 2  # leaves a helper holds: one to read, one waiting in its pipe
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPER_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); from ephq.files.vouch import serve; serve()"
)


def key_fields(state: str, name: str) -> tuple[str, str, int] | None:
    """The tree key, id and attempts in a state's file name; None if it is not such a name."""
    # The names' patterns without their NamedTuples: a million of them add a second.
    if state.endswith("ready"):
        ready = READY_NAME.fullmatch(name)
        return None if ready is None else (ready[1], ready[1], int(ready[2]))
    timed = TIMED_NAME.fullmatch(name)
    if timed is None or (timed[4] is None) != state.endswith("delayed"):
        return None
    return timed[1], timed[2], int(timed[3])


# A whole leaf's names matched at once, a name per line: a tenth of matching each on its own,
# which was a sixth of reading a file. The line count says no name held a line end; the dot
# count tells a lease's names (a token: three dots) from a delayed message's (two).
_LEAF_READY = re.compile(rf"(?:{READY_NAME.pattern}\n)*", re.ASCII)
_LEAF_TIMED = re.compile(rf"(?:{TIMED_NAME.pattern}\n)*", re.ASCII)


def _named_alike(state: str, prefix: str, names: list[str]) -> bool:
    """Whether every name of a leaf, sorted, is one a message of its state has, with the key
    prefix its directories spell (what key_fields tells of each name)."""
    if not names:
        return True
    # Sorted names sharing a prefix are a run: the first and the last tell for all.
    if not (names[0].startswith(prefix) and names[-1].startswith(prefix)):
        return False
    lines = "\n".join(names) + "\n"
    if lines.count("\n") != len(names):
        return False
    if state.endswith("ready"):
        return _LEAF_READY.fullmatch(lines) is not None
    dots = 2 if state.endswith("delayed") else 3
    return lines.count(".") == dots * len(names) and _LEAF_TIMED.fullmatch(lines) is not None


def vouch(leaf: Leaf) -> Listed:
    """The leaf's names, each with the id its file holds if it is vouched for, else None."""
    state, prefix, path = leaf
    try:  # the leaf opened once: each file is one lookup, and the leaf cannot move under us
        directory = os.open(path, _DIRECTORY)
    except OSError:
        return [], []  # pruned, or not a directory (a link): the walk saw and reported it
    try:
        with os.scandir(directory) as entries:
            listed = sorted((e.name, e.is_file(follow_symlinks=False)) for e in entries)
        names = [name for name, _ in listed]
        if _named_alike(state, prefix, names):
            at = 0 if state.endswith("ready") else TIME_HEX + 1  # where a name holds its id
            ids = [
                _holds(directory, name, name[at : at + ID_LENGTH]) if regular else None
                for name, regular in listed
            ]
        else:
            ids = [
                _vouch_one(state, prefix, directory, name) if regular else None
                for name, regular in listed
            ]
    except OSError:
        return [], []
    finally:
        os.close(directory)
    return names, ids


def _vouch_one(state: str, prefix: str, directory: int, name: str) -> str | None:
    """The id the file holds, if its name is one a message of the leaf has and it holds it."""
    fields = key_fields(state, name)
    if fields is None or not fields[0].startswith(prefix):
        return None
    return _holds(directory, name, fields[1])


def _holds(directory: int, name: str, message_id: str) -> str | None:
    """message_id, if the file is a record of that message; else None.

    No fstat: the listing said the name was a regular file (d_type), the open follows no link
    and does not block, and what is not a whole record does not parse. Whatever replaced the
    file since the listing (a directory, a pipe, a file being written) is not vouched for, and
    check looks at it on its own; so is a file larger than a record.
    """
    try:
        fd = os.open(name, _READ, dir_fd=directory)
    except OSError:
        return None
    try:
        raw = read_bounded(fd, MAX_RECORD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    if raw is None:
        return None
    try:
        found = record_id(raw)
    except CorruptRecord:
        return None
    return found if found == message_id else None


class Reading:
    """The leaves of a check, each listed and vouched for by this process or a helper.

    The walk adds every leaf first (the directories above them are few). This process then
    reads leaves from the back of the list; once what it has read says the leaves left hold
    SHARE_FROM files or more, it starts a helper per further CPU, each taking leaves from the
    front, _AHEAD at a time, so that all finish together however fast each one is.
    """

    def __init__(self) -> None:
        self._leaves: list[Leaf] = []
        self._waiting: collections.deque[int] = collections.deque()  # leaves nobody took yet
        self._answers: dict[int, Listed] = {}
        self._helpers: list[threading.Thread] = []

    def add(self, leaf: Leaf) -> None:
        self._waiting.append(len(self._leaves))
        self._leaves.append(leaf)

    def ids(self) -> list[tuple[Leaf, Listed]]:
        """Every leaf added, in order, with vouch()'s answer for it."""
        files = done = 0
        if not READ_HERE:
            self._start_helpers()
        while READ_HERE and (i := self._take(front=False)) is not None:
            self._answers[i] = vouch(self._leaves[i])
            files += len(self._answers[i][0])
            done += 1
            if not self._helpers and files * len(self._waiting) >= SHARE_FROM * done:
                self._start_helpers()
        for talk in self._helpers:
            talk.join()
        answers = self._answers
        return [  # a leaf a failed helper took is read here
            (leaf, answers[i] if i in answers else vouch(leaf))
            for i, leaf in enumerate(self._leaves)
        ]

    def close(self) -> None:
        """Let the helpers go, if the walk stopped before ids() (an error)."""
        self._waiting.clear()

    def _take(self, front: bool) -> int | None:
        """The next leaf nobody took; None once all are taken. (A deque's pops are atomic.)"""
        try:
            return self._waiting.popleft() if front else self._waiting.pop()
        except IndexError:
            return None

    def _start_helpers(self) -> None:
        for _ in range(min(_cpus(), _MAX_HELPERS + 1) - 1):
            talk = threading.Thread(target=self._helper, daemon=True)
            talk.start()
            self._helpers.append(talk)

    def _helper(self) -> None:
        """One helper's life, from this side: it is given _AHEAD leaves, then one more for
        each it answers, so that it never holds many more than it can read."""
        try:
            helper = subprocess.Popen(
                [sys.executable, "-I", "-c", HELPER_CODE, _ROOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except Exception:  # no interpreter to start (an embedded Python): all is read here
            return
        if helper.stdin is None or helper.stdout is None:  # not with PIPE: for the types
            return
        given: set[int] = set()  # leaves it holds
        try:
            while len(given) < _AHEAD and self._give(helper.stdin, given):
                pass
            while given:
                i, (names, ids) = pickle.load(helper.stdout)
                if i not in given:
                    break  # not an answer to what it was asked: nonsense
                given.discard(i)
                if isinstance(names, list) and isinstance(ids, list) and len(names) == len(ids):
                    self._answers[i] = names, ids
                if len(given) == _AHEAD - 1:  # it was full: one more (or the end)
                    self._give(helper.stdin, given)
        except Exception:  # it died or answered nonsense: what it did not answer is read here
            pass
        finally:
            helper.kill()
            helper.communicate()

    def _give(self, pipe: IO[bytes], given: set[int]) -> bool:
        """Hand the next leaf to a helper, or tell it there are no more (False)."""
        i = self._take(front=True)
        pickle.dump(None if i is None else (i, self._leaves[i]), pipe, pickle.HIGHEST_PROTOCOL)
        pipe.flush()
        if i is None:
            return False
        given.add(i)
        return True


def serve() -> None:
    """A helper's life: (number, leaf) pickles from stdin until None, each answered with
    (number, vouch(leaf)) on stdout."""
    while (task := pickle.load(sys.stdin.buffer)) is not None:
        i, leaf = task
        pickle.dump((i, vouch(leaf)), sys.stdout.buffer, pickle.HIGHEST_PROTOCOL)
        sys.stdout.buffer.flush()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
