"""Recycled message files: an acked file is kept in pool/ and overwritten by a later enqueue.

Why: on ext4 without a journal (these machines' root file system) a new inode is slow to allocate
for minutes after many were freed, because the allocator skips recently deleted inodes, and
freeing a file's blocks issues a discard (~70 µs with the discard mount option). A queue that
creates a file per enqueue and unlinks it on ack pays both on every message. Reusing files keeps
the steady state, and a drain followed by the next burst, from allocating or freeing anything.

Privacy: an acked message's content must not stay readable, so ack overwrites the file with
zeros (zeros keep the block; truncation would free it and cost a discard). The acker locks the
file before moving it into its slot and zeroes it under that lock; whoever takes a file from the
pool locks it before writing, so a producer never writes into a file still being zeroed. (A
process killed between the move and the zeroing leaves one unscrubbed file in the pool until a
producer overwrites it.)

On a file system in memory (tmpfs) there is nothing to save and the pool's work costs more than
an unlink: ack unlinks there (docs/design.md has the measurements).

The pool is bounded: at most SLOTS files, each of at most MAX_KEPT_BYTES (bigger ones are freed:
a few large messages must not pin megabytes). bench/pool.py measures the trade-off between the
pool's size, the disk it keeps and the cost of a drain. It has a directory of its own so that
what lists tmp/ (recovery, on every reap) does not list thousands of pooled files too.

Space: when the file system runs low (LOW_SPACE_FRACTION of its blocks or inodes left, checked at
most once a second), ack frees files instead of keeping them and the pool gives back what it
holds, so consumers make room on a full disk; purge empties it.

Trust: a file taken from the pool is used only if it is a regular file with no other name and no
bigger than the pool keeps; anything else is set aside (see quarantine.py). A file with a second
name is what a power loss can leave when the pool's directory was not flushed after a producer
took the file (the producer's message keeps the other name), so writing into it would overwrite
that message: it is dropped from the pool instead.

Settled files: a long-lived producer flushes pool/ once for all the files it lists there; their
names then stick, and their sizes and blocks stuck when they were written, so one of them
refilled with as many bytes needs only its data flushed (fdatasync), not a new file's inode and
directory (docs/design.md, "A flush of data alone"). Such a refill is sealed (record.py). A power
loss may undo its moves out of pool/ and leave the message under its pooled name: so the first
process to use a store after a boot places every sealed record it finds in pool/ before anyone
refills or frees a pooled file, and marks pool/ `scanned-<boot id>`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable

from .fsio import (
    FILE_MODE,
    NotOurs,
    boot_id,
    fsync_dir,
    is_boot_id,
    listdir,
    on_memory_file_system,
    open_regular,
    try_lock,
    unlink_quietly,
)
from .record import unsealed

SLOTS = 4096
MAX_KEPT_BYTES = 16384
FREE_SUFFIX = ".free"
# Random slots tried before the pool is listed or taken for full.
_DRAWS = 4
# When the pool was found empty (full), look again only after this long: a producer-only
# workload would otherwise list the pool on every enqueue, and a long drain draw slots on every
# ack, for nothing.
_RETRY_NS = 50_000_000
# Below this share of free blocks or inodes the pool stops keeping files and gives its own back.
LOW_SPACE_FRACTION = 0.05
_LOW_SPACE_CAP_BYTES = 1 << 30  # on a large disk, 1 GiB free is not low
_SPACE_CHECK_NS = 1_000_000_000
# How long a producer waits for an acker to finish zeroing a file it took, or an acker for a
# dead-letterer to let go of the file (microseconds to milliseconds, as a rule); past it the
# file is someone else's and is left.
_LOCK_TRIES = 1000
_LOCK_PAUSE_S = 0.001

# Pooled files a producer tries before it makes a new one (others may take them first, or they
# may have to be set aside).
_TAKE_TRIES = 64

# A producer settles pooled files when it finds at least this many: one flush of pool/ for so
# many refills. A process that acks and enqueues by turns lets this many gather first (16
# files of a 4 KiB block each on ext4: 64 KiB a stream); with 4, the flushes of pool/ took half
# of what refilling saved.
SETTLE_AT_LEAST = 16
SCANNED = "scanned-"  # + the boot id: this boot's first look at pool/ is done

SetAside = Callable[[str, NotOurs], bool]
# Place the sealed record in a pooled file (fd: the file, locked; its path, bytes and record).
PlaceSealed = Callable[[int, str, bytes, bytes], None]
# A pooled file's inode and mtime: every give (an ack's zeroing) sets the mtime to an instant of
# its own (_given_stamp), and every write moves it.
Identity = tuple[int, int]


class FilePool:
    def __init__(self, pool_dir: str, set_aside: SetAside, place_sealed: PlaceSealed) -> None:
        self.dir = pool_dir
        self._set_aside = set_aside
        self._place_sealed = place_sealed
        self._looked_this_boot = False
        # Settled names, each with its file as the flush found it: see take_settled.
        self._settled: list[tuple[str, Identity | None]] = []
        self._settle_after_ns = 0
        self._given_since_settling = 0  # files this process put in the pool since it last listed
        self._space_checked_ns = 0
        self._low = False
        self._hints: list[str] = []
        self._look_after_ns = 0
        self._full_until_ns = 0
        self._empties: list[str] = []
        self._gives = 0  # slots this process found by drawing
        self._paying: bool | None = None  # whether the pool pays on this file system

    def pays(self) -> bool:
        """Not on a file system in memory (tmpfs): there a drain took 0.76x the time with no
        pool, and the next burst 0.86x (bench/pool.py); asked of /proc once per process."""
        if self._paying is None:
            place = os.path.dirname(self.dir)
            while not os.path.lexists(place) and os.path.dirname(place) != place:
                place = os.path.dirname(place)  # a stream not made yet: its home tells
            self._paying = not on_memory_file_system(place)
        return self._paying

    def give(self, path: str) -> None:
        """Take an acked file out of its state and keep it for reuse (or free it).

        Raises FileNotFoundError when the file was not there: someone else moved it first, and
        NotOurs when what is there is not a file ephq wrote.
        """
        slot = None if not self.pays() or self.low_on_space() else self._empty_slot()
        if slot is None:  # the pool is full (or off, or the disk low): free the file
            os.unlink(path)
            return
        fd, st = open_regular(path, os.O_WRONLY)
        try:
            # A second name keeps the bytes (zeroing would zero it too); a big file is freed;
            # so is one someone else keeps locked (a dead-letterer holds it for milliseconds;
            # anyone else must not hang an ack).
            if st.st_size > MAX_KEPT_BYTES or st.st_nlink > 1 or not _lock_soon(fd):
                os.unlink(path)
                return
            # Only the rename makes the file ours: until then a reaper or nack may move it.
            try:
                os.rename(path, f"{self.dir}/{slot}")
            except FileNotFoundError:
                if not os.path.lexists(path):
                    raise  # someone else moved it first
                os.unlink(path)  # no pool/ (a store made before it had one): free the file
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                os.unlink(path)  # the pool's directory cannot grow: free the file
                return
            os.pwrite(fd, bytes(st.st_size), 0)
            try:
                os.utime(fd, ns=(_given_stamp(),) * 2)
            except OSError:  # a file system that will not set times: a file unstamped is freed
                unlink_quietly(f"{self.dir}/{slot}")
                return
        finally:
            os.close(fd)
        self._hints.append(slot)  # this process's next enqueue can have it at once
        self._given_since_settling += 1

    def low_on_space(self) -> bool:
        """Whether the file system is low on blocks or inodes (looked at once a second)."""
        now = time.monotonic_ns()
        if now - self._space_checked_ns < _SPACE_CHECK_NS:
            return self._low
        self._space_checked_ns = now
        try:
            fs = os.statvfs(self.dir)
        except OSError:
            return self._low
        block_floor = min(fs.f_blocks * fs.f_frsize * LOW_SPACE_FRACTION, _LOW_SPACE_CAP_BYTES)
        low = fs.f_bavail * fs.f_frsize < block_floor
        if fs.f_files:  # 0 where the file system has no fixed number of inodes
            low = low or fs.f_favail < fs.f_files * LOW_SPACE_FRACTION
        if low and not self._low:
            self.free_all()
        self._low = low
        return low

    def free_all(self) -> int:
        """Free every pooled file (purge; a disk running low); how many were freed."""
        self.look_after_boot()
        self._hints.clear()
        self._settled.clear()
        freed = 0
        for name in listdir(self.dir):
            path = f"{self.dir}/{name}"
            try:
                st = os.lstat(path)
                # What the pool never keeps is not its own to delete: check reports it.
                if not is_slot(name) or not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEPT_BYTES:
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
            freed += 1
        return freed

    def _empty_slot(self) -> str | None:
        """A slot with no file in it, or None when the pool is full (or off).

        A few random draws serve a process's first acks (a lone `ephq ack` must not list
        thousands of pooled files: ~1.5 ms); a process that keeps acking lists the pool once
        after a collision and uses up its empty slots before looking again.
        """
        try:
            return self._empties.pop()
        except IndexError:  # none left (or another thread of this process took the last)
            pass
        if not SLOTS or time.monotonic_ns() < self._full_until_ns:
            return None
        for _ in range(_DRAWS):
            slot = f"{int.from_bytes(os.urandom(4), 'little') % SLOTS}{FREE_SUFFIX}"
            if not os.path.lexists(f"{self.dir}/{slot}"):
                self._gives += 1
                return slot
        if self._gives < _DRAWS:  # a short-lived process: free this file, keep the pool as is
            return None
        present = set(listdir(self.dir))
        empties = [n for n in (f"{i}{FREE_SUFFIX}" for i in range(SLOTS)) if n not in present]
        if len(empties) < SLOTS // 64:  # (nearly) full: a drain; stop looking for a while
            self._full_until_ns = time.monotonic_ns() + _RETRY_NS
        start = int.from_bytes(os.urandom(4), "little") % max(1, len(empties))
        self._empties = empties[start:] + empties[:start]  # concurrent ackers spread out
        try:
            return self._empties.pop()
        except IndexError:
            return None

    def open_new(self, path: str, *, reuse: bool = True) -> tuple[int, bool]:
        """A writable file at path (which must not exist yet), and whether it was recycled
        from the pool.

        A recycled file is returned locked (see the module's note on privacy) and may hold
        zeros: the writer overwrites from the start and truncates to what it wrote. reuse:
        False to leave the pool's files alone (a producer that refills settled files lets
        them gather, to settle several with one flush).
        """
        self.look_after_boot()
        taken = self._take(path, self._next_free) if reuse else None
        if taken is not None:
            return taken[0], True
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), False

    def take_settled(self, path: str) -> tuple[int, int, bool] | None:
        """A file of the settled ones (see the module's note) moved to path, locked, its size,
        and whether it is still as the flush that settled it found it: then a writer can refill
        it with as many bytes and flush its data alone; if not, it must fsync it. None when
        there is none to take (then open_new as ever).

        Slot names come back: other processes may take a settled file, and an ack give it (or
        another) back under the same name, after the flush, its new entry unflushed. The file's
        inode and mtime tell: every give sets the mtime to an instant of its own
        (_given_stamp), and a writer's write moves it too. They are looked at once the file is
        taken and locked (a rename moves the ctime, not the mtime), so nothing can change them
        between the look and the use."""
        if not self.pays() or not self.look_after_boot():
            return None
        as_flushed: Identity | None = None

        def next_slot() -> str | None:
            nonlocal as_flushed
            settled = self._next_settled()
            if settled is None:
                return None
            slot, as_flushed = settled
            return slot

        taken = self._take(path, next_slot)
        if taken is None:
            return None
        fd, size = taken
        st = os.fstat(fd)  # locked: as the last give (or a give cut short) left it
        return fd, size, as_flushed is not None and (st.st_ino, st.st_mtime_ns) == as_flushed

    def _take(self, path: str, next_slot: Callable[[], str | None]) -> tuple[int, int] | None:
        """A pooled file moved to path (the move is what makes it ours), locked, and its size;
        None when next_slot has none left that can be used."""
        for _ in range(_TAKE_TRIES):
            slot = next_slot()
            if slot is None:
                return None
            source = f"{self.dir}/{slot}"
            try:
                os.rename(source, path)
            except FileNotFoundError:
                # The slot is looked at no more: a give may have filled it again since.
                if not os.path.isdir(os.path.dirname(path)):
                    raise  # path's directory is missing: the caller makes it and asks again
                continue  # another producer took it first
            claimed = self._claimed(path)
            if claimed is not None:
                return claimed
        return None

    def _next_settled(self) -> tuple[str, Identity | None] | None:
        try:
            return self._settled.pop()
        except IndexError:
            pass
        now = time.monotonic_ns()
        if now < self._settle_after_ns and self._given_since_settling < SETTLE_AT_LEAST:
            return None
        self._given_since_settling = 0
        names = [n for n in listdir(self.dir) if is_slot(n)]
        if len(names) < SETTLE_AT_LEAST:
            self._settle_after_ns = now + _RETRY_NS
            return None
        # As they are before the flush: a file changed after this may not be what it flushed.
        self._settled = [(name, _identity(f"{self.dir}/{name}")) for name in names]
        fsync_dir(self.dir)  # one flush, and every name listed sticks
        return self._settled.pop()

    def look_after_boot(self) -> bool:
        """Once a process: unless pool/ was looked at since this boot, place what a power loss
        may have left in it (see the module's note), then mark it. False where the boot cannot
        be told (then nothing is refilled by a data flush alone, so nothing needs looking for)."""
        if self._looked_this_boot:
            return True
        boot = boot_id()
        if boot is None or not self.pays():
            return False
        mark_name = f"{SCANNED}{boot}"
        mark = f"{self.dir}/{mark_name}"
        if not os.path.lexists(mark):
            try:
                names = listdir(self.dir)
            except FileNotFoundError:
                return False  # no pool/ yet: nothing to look at, and nowhere to mark
            for name in names:
                if is_slot(name):
                    self._place_if_sealed(f"{self.dir}/{name}")
                elif is_boot_mark(name) and name != mark_name:
                    _remove_mark(f"{self.dir}/{name}")  # an earlier boot's
            try:
                os.close(
                    os.open(
                        mark, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
                    )
                )
            except OSError:
                return False  # a full disk, say: looked, but the next process looks again
        self._looked_this_boot = True
        return True

    def _place_if_sealed(self, path: str) -> None:
        try:
            fd = try_lock(path)
        except NotOurs:
            return  # check reports it
        if fd is None:
            return  # taken, or an acker is zeroing it: acked bytes either way
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_KEPT_BYTES:
                raw = os.pread(fd, st.st_size, 0)
                record = unsealed(raw)
                if record is not None:
                    self._place_sealed(fd, path, raw, record)
        finally:
            os.close(fd)

    def _claimed(self, path: str) -> tuple[int, int] | None:
        """The locked fd of a file just taken from the pool and its size, or None if it must not
        be used."""
        try:
            fd, st = open_regular(path, os.O_WRONLY)
        except FileNotFoundError:
            return None
        except NotOurs as exc:
            self._set_aside(path, exc)
            return None
        if st.st_nlink > 1:  # named elsewhere too (see the module's note): leave the bytes
            os.close(fd)
            unlink_quietly(path)
            return None
        if st.st_size > MAX_KEPT_BYTES:
            os.close(fd)
            self._set_aside(path, NotOurs(f"{st.st_size} bytes, more than the pool keeps"))
            return None
        if _lock_soon(fd):  # else an acker is zeroing it, or someone else holds it: leave it
            return fd, st.st_size
        os.close(fd)
        unlink_quietly(path)
        return None

    def _next_free(self) -> str | None:
        try:
            return self._hints.pop()
        except IndexError:
            pass
        now = time.monotonic_ns()
        if now < self._look_after_ns:
            return None
        self._hints = [n for n in listdir(self.dir) if is_slot(n)]
        if not self._hints:
            self._look_after_ns = now + _RETRY_NS
            return None
        try:
            return self._hints.pop()
        except IndexError:  # another thread emptied it
            return None


def is_mark_file(st: os.stat_result) -> bool:
    """Whether what a boot mark's name names is a mark as ephq makes it: an empty file."""
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _remove_mark(path: str) -> None:
    """Remove an earlier boot's mark; anything else under such a name is not ours to remove
    (check reports it, and --repair sets it aside)."""
    try:
        if is_mark_file(os.lstat(path)):
            os.unlink(path)
    except FileNotFoundError:
        pass  # another process removed it first


def _identity(path: str) -> Identity | None:
    """The inode and mtime of what is at path, or None if nothing is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _given_stamp() -> int:
    """A random instant (ns) for a given file's mtime, so that each give leaves a file its own.

    The clock that stamps a write cannot tell a file taken from its slot and given back within
    one of its ticks: before Linux 6.13 it ticks every few milliseconds, and where timestamps
    count whole seconds (ext4 with 128-byte inodes) a tick is a second. An mtime set explicitly
    is kept as given, to the second at least; this one falls in 1970-2038, which every inode
    can hold.
    """
    return int.from_bytes(os.urandom(8), "little") % ((1 << 31) * 1_000_000_000)


def _lock_soon(fd: int) -> bool:
    """Take fd's exclusive flock, waiting at most about a second (_LOCK_TRIES pauses)."""
    for _ in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(_LOCK_PAUSE_S)
    return False


def is_slot(name: str) -> bool:
    number = name[: -len(FREE_SUFFIX)]
    return (
        name.endswith(FREE_SUFFIX) and number.isascii() and number.isdigit() and int(number) < SLOTS
    )


def is_boot_mark(name: str) -> bool:
    """`scanned-<boot id>`: pool/ was looked at in that boot (see the module's note)."""
    return name.startswith(SCANNED) and is_boot_id(name[len(SCANNED) :])
