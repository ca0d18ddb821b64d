"""One stream's messages on disk and every transition between their states.

                 enqueue                 claim                   ack
      tmp/ ─────────────────▶ ready/ ─────────────▶ inflight/ ─────────▶ (removed)
        │ delay                 ▲ ▲                   │ │ │ extend: the deadline moves on
        ▼                       │ └── reap (expired) ─┘ │ └─────────────▶ inflight/
     delayed/ ── reap (due) ────┘ ◀──── nack ───────────┤
        ▲                                               │ nack with delay
        └───────────────────────────────────────────────┘
      ready/ or inflight/ ── dead_letter (attempts spent, unreadable) ──▶ dlq/ready/

Invariants:
- A message is in exactly one of ready/, delayed/, inflight/ or dlq/; for an instant during
  dead-lettering it is tmp/<id>.<attempts>.dying, which recovery.py finishes.
- Every transition is one rename(2) of the message's file (ack: one unlink). Whoever renames first
  wins and the loser gets ENOENT, so two consumers never hold the same delivery and no lock is
  needed on the hot path.
- Names carry all a scan needs (names.py): ready sorts by id, which is FIFO order, delayed and
  inflight by due time. A message that comes back keeps its id and so its place.
- A file under a final name is complete: writers write in tmp/, flush, then rename.
- Attempts are counted when a lease is taken, so a consumer that dies still uses one up; a
  message delivered max_attempts times is dead-lettered instead of being delivered again.
- Expired leases and due delayed messages are moved by whichever operation next notices (reap):
  no daemon. A process remembers when the next one can be due and does not scan before then
  (at most REAP_INTERVAL later), and the trees keep every scan to the slices that are due.

- Nothing read is trusted (fsio.py): a file is a message only if it is a regular file under a
  message's name, holding that message's record. Anything else a consumer meets is set aside
  (quarantine.py) and the consumer goes on; a name that is not a message's is skipped.

Durability: enqueue, dead-lettering and redrive flush file and directory before returning (when
durable). Leases, acks and nacks are not flushed: a power loss can only undo them, and an undone
lease or ack means a redelivery, which at-least-once delivery allows. After a power loss a
directory that was not flushed can still name a file that was since acked and recycled for
another message; the reader finds the other message's id in it and drops that stale name
(tests/test_crash_states.py explores every such state).

Kept apart: how a batch is committed and placed (batch.py: enqueue_many, import, a redrive into
a group), what reads a store without taking anything (browse.py: list, get, peek, stats,
leases, export), and moving messages out to another store with fresh attempts (redrive.py).
"""

from __future__ import annotations

import errno
import heapq
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import BadInput, EphqError, LeaseLost, NotFound
from ..message import Exported, Message, died_elsewhere, live_metadata, utc_from_ns
from . import batch, sweep
from .census import Census
from .fsio import (
    NotOurs,
    ensure_dir,
    fill_locked,
    fsync_dir,
    is_real_dir,
    listdir,
    open_regular,
    place,
    read_regular,
    try_lock,
    unlink_quietly,
    write_all,
)
from .groups import (
    Groups,
    group_of,
)
from .holders import orphaned_leases
from .names import (
    IdSource,
    ReadyName,
    TimedName,
    format_receipt,
    id_time_ns,
    is_group_token,
    is_id,
    lease_token,
    new_token,
    parse_ready,
    parse_timed,
)
from .pool import FilePool
from .quarantine import Quarantine
from .record import (
    MAX_ERROR_CHARS,
    MAX_RECORD_BYTES,
    SEAL_BYTES,
    CorruptRecord,
    Record,
    decode,
    encode,
    iso_utc,
    record_id,
    sealed,
)
from .recovery import Staged, clean_tmp, holds_what_was_staged, staged_name
from .tree import BATCH_SPACING_NS, READY_CUTS, READY_PRUNE_AFTER_NS, TIMED_CUTS, Tree

Clock = Callable[[], int]
Progress = Callable[[int], None] | None  # told how many more messages are done
# The stream's max_attempts when asked (None: no limit, for dead letters).
MaxAttempts = Callable[[], int | None]
REAP_INTERVAL_NS = 1_000_000_000
STATES = ("ready", "delayed", "inflight")
# A sealed record's file is padded to a multiple of this, so a later message of about its size
# fits it when the file is refilled (a file takes a 4 KiB block on ext4 all the same).
_ROOM = 256
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Names in ready/ that this process found are not messages, skipped from then on; forgotten
# wholesale past this many (a store full of junk costs a re-parse, never a hang).
_FOREIGN_NAMES = 4096
# How long a consumer goes on listing the leaf it last took names from before it reads the
# tree from the top again (which it also does when that leaf runs dry, and when it returned a
# message to ready/ itself): what another process places into an earlier leaf meanwhile (a
# lease it let go, a producer stamped before a slow flush) waits at most this long. The ready
# tree keeps an emptied leaf this long too (READY_PRUNE_AFTER_NS), so a consumer keeping up
# with its producers would otherwise list several empty leaves for every message.
_WALK_EVERY_NS = 100_000_000
# Renames into a known lease directory that found nothing, in a row, taken as lost races
# before one is looked into (_lease_move).
_LOST_RACES_TRUSTED = 8


class Store:
    """The state directories of one queue: a stream's own, or its dead-letter queue's."""

    def __init__(
        self,
        path: str,
        stream: str,
        *,
        durable: bool,
        clock: Clock,
        ids: IdSource,
        graveyard: Store | None,
        quarantine: Quarantine,
        holders_dir: str,
    ) -> None:
        self.path = path
        self.stream = stream
        self.durable = durable
        self.clock = clock
        self.graveyard = graveyard  # where dead letters go; None for a dead-letter queue itself
        # The store of the stream's dead-letter stream, if it has one (its setting, read at
        # each death): there dead letters become ordinary messages instead of going to graveyard.
        self.dead_letter_stream: Callable[[], Store | None] = _none
        self.groups: Groups | None = None  # a stream's own store has them (stream.py)
        self.holders_dir = holders_dir  # workers' announcements of their leases (holders.py)
        self.quarantine = quarantine
        self.ready = Tree(
            os.path.join(path, "ready"), READY_CUTS, self._set_aside_dir, READY_PRUNE_AFTER_NS
        )
        self.delayed = Tree(os.path.join(path, "delayed"), TIMED_CUTS, self._set_aside_dir)
        self.inflight = Tree(os.path.join(path, "inflight"), TIMED_CUTS, self._set_aside_dir)
        self.tmp = os.path.join(path, "tmp")
        self.bell = os.path.join(path, "bell")
        self._ids = ids
        self._lock = threading.Lock()
        self._reaping = threading.Lock()
        self._head: list[str] = []  # a heap of the cached leaf's names
        self._head_dir = ""  # the leaf they are from: listed again first (see _WALK_EVERY_NS)
        self._walk_due_ns = 0
        self._lease_dir = ""  # the inflight directory of this process's last lease
        self._lost_races = 0  # claims in a row that found their name taken (_lease_move)
        self._next_reap_ns = 0
        self._extended: dict[str, str] = {}  # receipt -> current inflight name, for this process
        self._foreign: set[str] = set()
        self.pool = FilePool(os.path.join(path, "pool"), self.set_aside, self._place_sealed)
        self._refilling = False  # set by this process's first durable enqueue (see _refill_settled)
        self.census = Census(path)

    def after_fork(self) -> None:
        """In a forked child (FileBackend.after_fork): no lock a thread of the parent's held,
        and no cached head a thread of the parent's was taking names from."""
        self._lock = threading.Lock()
        self._reaping = threading.Lock()
        self._head = []

    @property
    def is_dead_letter_queue(self) -> bool:
        return self.graveyard is None

    def create(self) -> None:
        for sub in ("ready", "delayed", "inflight", "tmp", "pool"):
            ensure_dir(os.path.join(self.path, sub), durable=self.durable)
        for _ in range(2):
            try:
                fd, _ = open_regular(self.bell, os.O_WRONLY | os.O_CREAT)
            except NotOurs as exc:
                self.set_aside(self.bell, exc)
                continue
            os.close(fd)
            return

    def exists(self) -> bool:
        return is_real_dir(self.tmp) is True

    # -- what is not ours ------------------------------------------------------------------

    def set_aside(self, path: str, problem: NotOurs) -> bool:
        """Get something that is not a message out of every reader's way (quarantine.py)."""
        return self.quarantine.set_aside(path, problem)

    def _set_aside_dir(self, path: str, why: str) -> None:
        self.quarantine.take(path)

    def load(self, path: str, message_id: str, *, taken: bool = True) -> Record | None:
        """The record of message_id in the file at path, or None: it is gone, or was not it.

        When the caller has taken the file (leased it), what is not that message's record is
        set aside: a link, a directory, a file of the wrong size or content, or a stale name
        that a power loss left on a recycled file now holding another message (a second name,
        dropped without losing a byte). A caller only looking leaves it for check.
        """
        try:
            raw, st = read_regular(path, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except NotOurs as exc:
            problem = exc
        else:
            found = _vetted(raw, st, message_id)
            if not isinstance(found, NotOurs):
                return found
            problem = found
        if taken:
            self.set_aside(path, problem)
        return None

    # -- enqueue ---------------------------------------------------------------------------

    def enqueue(self, data_json: str, delay_ns: int) -> str:
        now = self.clock()
        message_id = self._ids.next(now)
        content = encode(message_id, self.stream, id_time_ns(message_id), data_json, {})
        dest_dir, name = self.arrival(message_id, now, delay_ns)
        # A delayed message is neither refilled nor sealed (_refill_settled): the boot's look at
        # pool/ could not tell when it is due, and would deliver it early.
        self._write_in(content, dest_dir, name, refill=delay_ns <= 0)
        self._arrived(now, delay_ns)
        return message_id

    def enqueue_many(
        self,
        items: list[str],
        delay_ns: int,
        progress: Progress = None,
        groups: list[str | None] | None = None,
    ) -> list[str]:
        """All or nothing: written to a batch directory, committed by one rename, then placed.

        Messages with a group (groups.py) always come this way, even one alone: the batch's
        installer, which recovery re-runs, is what places a message in its group.
        """
        now = self.clock()
        ids = [self._ids.next(now + i * BATCH_SPACING_NS) for i in range(len(items))]
        batch.commit(
            self,
            ids[0],
            lambda into: batch.stage_new(self, into, ids, items, now, delay_ns, progress, groups),
        )
        self._arrived(now, delay_ns)
        return ids

    def import_batch(self, records: list[Exported]) -> int:
        """Take exported messages in, keeping ids, attempts, due times and dead letters: all or
        nothing, by the batch protocol of enqueue_many (one commit for both the stream's
        messages and its dead letters). BadInput, before anything is written, for an id that
        is already here."""
        now = self.clock()
        here = {mid for _, mid, _ in self.entries(None, now)}
        if self.graveyard is not None:
            here |= {mid for _, mid, _ in self.graveyard.entries(None, now)}
        for record in records:
            if record.id in here:
                raise BadInput(f"message {record.id} is already in stream {self.stream!r}")

        def stage(into: str) -> None:
            for record in records:
                batch.stage_exported(self, into, record, now)

        batch.commit(self, records[0].id, stage)
        self.forget_head()
        self.ring()
        return len(records)

    def install_batch(self, committed: str) -> None:
        """Place what a committed batch holds (batch.py); recovery finishes one this way."""
        batch.install(self, committed)

    def arrival(self, message_id: str, now: int, delay_ns: int) -> tuple[str, str]:
        """The directory and name a new message goes to: ready/, or delayed/ until its delay
        has passed."""
        if delay_ns <= 0:
            return self.ready.leaf_dir(message_id), str(ReadyName(message_id, 0))
        due = now + delay_ns
        return self.delayed.leaf_dir(f"{due:016x}"), str(TimedName(due, message_id, 0))

    def _arrived(self, now: int, delay_ns: int) -> None:
        if delay_ns > 0:
            self._note_due(now + delay_ns)
        else:
            self.ring()

    def file_in(self, path: str, message_id: str, attempts: int, due_ns: int) -> bool:
        """Move a complete message file into ready/ (or delayed/ until due_ns), flushed when
        durable, keeping its attempts: how a dead letter is filed and a group's head goes out
        (groups.py). False if the file was gone."""
        now = self.clock()
        if due_ns > now:
            dest = self.delayed.leaf_dir(f"{due_ns:016x}")
            name = str(TimedName(due_ns, message_id, attempts))
        else:
            dest, name = self.ready.leaf_dir(message_id), str(ReadyName(message_id, attempts))
        if not place(path, dest, name, durable_dirs=self.durable, flush=self.durable):
            return False
        if due_ns > now:
            self._note_due(due_ns)
        else:
            self.ring()
            self.forget_head()  # it may come before what this process has cached
        return True

    def _write_in(self, content: bytes, dest_dir: str, name: str, *, refill: bool) -> None:
        try:
            self._write_once(content, dest_dir, name, refill)
        except OSError as exc:
            # A full disk: the pool's files are the room there is. Free them and try once more.
            if exc.errno not in _DISK_FULL or not self.pool.free_all():
                raise
            self._write_once(content, dest_dir, name, refill)

    def _write_once(self, record: bytes, dest_dir: str, name: str, refill: bool) -> None:
        """Write a message's file in tmp/ and move it into place.

        Durable: the file is named `<name>.<token>.<crc32>.staged` (recovery.py), written and
        fsynced, and then moved into place without a flush. One flush: on ext4, XFS and btrfs
        the fsync of a file makes the name it was given stick with its bytes (their journals
        commit the rename with the inode; ext4 without one writes a new entry's directory
        block on fsync), and a power loss that undoes the move into place leaves the staged
        file, which recovery places. Where the pool keeps files, the record is padded (and
        sealed, unless delayed: as_kept), so that a later message fits the file when it is
        refilled; a long-lived producer refills a settled file with a flush of data alone
        (_refill_settled).
        Not durable: `<name>.<token>.w`, scrap if left behind.
        """
        reuse = True
        if refill and self.durable and self.pool.pays():
            if self._refilling:
                if self._refill_settled(record, dest_dir, name):
                    return
                # None settled: a new file, so that acked ones gather in the pool until one
                # flush settles several (else each ack's file is taken at once, never settled).
                reuse = False
            self._refilling = True
        content = self.as_kept(record, seal=refill)
        if self.durable:
            tmp = os.path.join(self.tmp, staged_name(name, content))
        else:
            tmp = os.path.join(self.tmp, f"{name}.{new_token()}.w")
        try:
            fd, recycled = self.pool.open_new(tmp, reuse=reuse)
        except FileNotFoundError:
            self.create()
            fd, recycled = self.pool.open_new(tmp, reuse=reuse)
        fill_locked(fd, tmp, content, durable=self.durable, recycled=recycled)
        try:
            place(tmp, dest_dir, name, durable_dirs=self.durable, flush=False)
        except BaseException:
            unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)

    def as_kept(self, record: bytes, *, seal: bool = True) -> bytes:
        """A new message file's bytes: where a durable store's pool keeps files, the record
        padded with spaces, so that a later message of about its size fits the file when it is
        refilled with a flush of data alone, and sealed (record.py) unless the caller says not:
        a sealed record in pool/ is placed after a boot, as a ready message, so a batch's file
        (never placed without its commit) and a delayed message (due later) are not sealed."""
        if not (self.durable and self.pool.pays()):
            return record
        size = -(-(len(record) + SEAL_BYTES) // _ROOM) * _ROOM
        return sealed(record, size) if seal else record.ljust(size)

    def _refill_settled(self, record: bytes, dest_dir: str, name: str) -> bool:
        """A durable enqueue into a settled pooled file (pool.py), flushed by fdatasync alone:
        the file's name, size and blocks are already on disk, and it is refilled with as many
        bytes (the record sealed, then spaces). Staged as any durable enqueue, so a crashed
        process leaves it for recovery; a power loss that undoes the moves leaves it sealed in
        pool/, where the first process after the boot finds it. False, having written nothing,
        when there is no settled file; a file changed since it was settled, or too small for
        the record (then cut to its size), is fsynced instead, as a usual enqueue is."""
        # Named for its record before its size is known: the name's CRC-32 is the record's.
        staged = os.path.join(self.tmp, staged_name(name, record))
        try:
            taken = self.pool.take_settled(staged)
        except FileNotFoundError:
            return False  # no tmp/: the usual way makes it
        if taken is None:
            return False
        fd, size, settled = taken
        try:
            fits = len(record) + SEAL_BYTES <= size
            write_all(fd, sealed(record, size if fits else 0), recycled=not fits)
            if fits and settled:
                os.fdatasync(fd)  # the same size, over a name and blocks already flushed
            else:
                os.fsync(fd)
            place(staged, dest_dir, name, durable_dirs=True, flush=False)
        except BaseException:
            unlink_quietly(staged)
            raise
        finally:
            os.close(fd)
        return True

    def _place_sealed(self, fd: int, path: str, raw: bytes, record: bytes) -> None:
        """A sealed record found in pool/ after a boot (pool.py): placed as a staged enqueue
        whose name a power loss undid, as a new message (its attempts were in its lost name)."""
        try:
            message_id = record_id(record)
        except CorruptRecord:
            return  # sealed, but no message: check reports nothing (it is a pooled file's bytes)
        if is_id(message_id):
            self.install_staged(fd, path, Staged(ReadyName(message_id, 0), zlib.crc32(raw)))

    def install_staged(self, fd: int, path: str, staged: Staged) -> bool:
        """Place a staged enqueue left by a writer that is gone (recovery.py), fd its locked
        file; False if its bytes are not the whole message its name promises."""
        st = os.fstat(fd)
        if st.st_size > MAX_RECORD_BYTES:
            return False
        raw = os.pread(fd, st.st_size, 0)
        if not holds_what_was_staged(raw, staged):
            return False
        if isinstance(_vetted(raw, st, staged.name.id), NotOurs):
            return False
        due = staged.name.at_ns if isinstance(staged.name, TimedName) else None
        if due is not None:
            dest = self.delayed.leaf_dir(f"{due:016x}")
        else:
            dest = self.ready.leaf_dir(staged.name.id)
        placed = f"{dest}/{staged.name}"
        try:
            if os.path.samestat(st, os.lstat(placed)):  # a power loss kept both its names
                unlink_quietly(path)
                return True
        except FileNotFoundError:
            pass
        # With a second name elsewhere (a pool slot a power loss kept; or it was leased, or
        # acked, since) it is placed all the same: a message is never dropped on a guess, and
        # at worst it is delivered again, as a power loss may always cause.
        place(path, dest, str(staged.name), durable_dirs=self.durable, flush=False)
        if due is not None:
            self._note_due(due)
        else:
            self.forget_head()  # it may come before what this process has cached
            self.ring()
        return True

    # -- claim -----------------------------------------------------------------------------

    def claim(self, count: int, visibility_ns: int, max_attempts: MaxAttempts) -> list[Message]:
        """Lease up to count ready messages, oldest first. max_attempts is asked for the stream's
        limit only when it can matter (a reap, a message delivered before): a settings file
        looked at costs a stat, and a fresh message cannot have reached any limit (at least 1)."""
        now = self.clock()
        if now >= self._next_reap_ns:
            self.reap(now, max_attempts())
        got: list[Message] = []
        while len(got) < count:
            candidate = self._next_candidate(now)
            if candidate is None:
                break
            message = self._claim_one(*candidate, now, visibility_ns, max_attempts)
            if message is not None:
                got.append(message)
        return got

    def _next_candidate(self, now: int) -> tuple[str, ReadyName] | None:
        """The next ready file in FIFO order and its parsed name, from a per-process cache of
        one leaf; names that are not a ready message's are skipped, and remembered as such.

        The cache is refilled from the leaf it came from while that has names, from the top of
        the tree otherwise, and at least every _WALK_EVERY_NS: messages that came back into
        earlier slices are seen when the current leaf is used up, or a tenth of a second later.
        """
        with self._lock:
            while True:
                while not self._head:
                    if not self._refill(now):
                        return None
                path = f"{self._head_dir}/{heapq.heappop(self._head)}"
                ready = parse_ready(path[len(self._head_dir) + 1 :])
                if ready is not None:
                    return path, ready
                if len(self._foreign) >= _FOREIGN_NAMES:
                    self._foreign.clear()
                self._foreign.add(path)

    def _refill(self, now: int) -> bool:
        # (A clock stepped back does not stretch the wait for a walk beyond _WALK_EVERY_NS.)
        if (
            self._head_dir
            and now < self._walk_due_ns <= now + _WALK_EVERY_NS
            and self._take_names(self._head_dir)
        ):
            return True
        self._walk_due_ns = now + _WALK_EVERY_NS
        for leaf in self.ready.leaves(now):
            if self._take_names(leaf.path):
                return True
            self.ready.prune(leaf, now)
        self._head_dir = ""
        return False

    def _take_names(self, leaf_dir: str) -> bool:
        """Make the names in leaf_dir (not known to be foreign) the head; False if none."""
        names = listdir(leaf_dir)
        if self._foreign and names:
            names = [n for n in names if f"{leaf_dir}/{n}" not in self._foreign]
        if not names:
            return False
        # A heap, not a sort: a fresh process (every CLI dequeue) takes one name of up to a
        # thousand, and heapify costs a third of sorting them.
        heapq.heapify(names)
        self._head = names
        self._head_dir = leaf_dir
        return True

    def forget_head(self) -> None:
        """Read the tree from the top at the next claim: a message came back to ready/,
        perhaps before what this process has cached."""
        with self._lock:
            self._head.clear()
            self._walk_due_ns = 0

    def _claim_one(
        self, path: str, ready: ReadyName, now: int, visibility_ns: int, max_attempts: MaxAttempts
    ) -> Message | None:
        limit = max_attempts() if ready.attempts else None
        if limit is not None and ready.attempts >= limit:
            why = f"delivered {ready.attempts} times; max_attempts is {limit}"
            self._dead_letter_if_room(path, ready.id, ready.attempts, why)
            return None
        deadline = now + visibility_ns
        attempts = ready.attempts + 1
        # The lease's name, as str(TimedName(deadline, id, attempts, token)) spells it, built
        # directly: every dequeue names one, and the tuple would only be formatted.
        at = f"{deadline:016x}"
        name = f"{at}.{ready.id}.{attempts}.{lease_token(False)}"
        dest_dir = self.inflight.leaf_dir(at)
        if not self._lease_move(path, dest_dir, name):
            return None  # another consumer took it first
        leased = f"{dest_dir}/{name}"
        # None: gone (its lease already expired and someone else reaped it) or set aside.
        record = self.load(leased, ready.id)
        if record is None:
            return None
        if self.groups is not None and isinstance(record.meta.get("group"), str):
            # A group's head: its receipt must say so (ack releases the group). Nobody else
            # knows this lease yet, so one more rename is all it takes.
            name = str(TimedName(deadline, ready.id, attempts, lease_token(True)))
            try:
                os.rename(leased, f"{dest_dir}/{name}")
            except FileNotFoundError:
                return None
        self._note_due(deadline)
        receipt = format_receipt(name, self.is_dead_letter_queue)
        return self.as_message(record, attempts, receipt, deadline)

    def _lease_move(self, path: str, dest_dir: str, name: str) -> bool:
        # Into the directory this process last leased into (its slice has not ended, so no
        # prune removes it), a rename that finds nothing lost a race for the name: no lstat is
        # spent to tell. A run of _LOST_RACES_TRUSTED of them looks again, in case something
        # removed the directory after all (the names passed over stay in ready/).
        known = dest_dir == self._lease_dir and self._lost_races < _LOST_RACES_TRUSTED
        try:
            moved = place(
                path, dest_dir, name, durable_dirs=self.durable, flush=False, dest_known=known
            )
        except OSError as exc:
            # A full disk may have no room for a new inflight directory: the pool's files are
            # the room there is.
            if exc.errno not in _DISK_FULL or not self.pool.free_all():
                raise
            moved = place(path, dest_dir, name, durable_dirs=self.durable, flush=False)
        if moved:
            self._lease_dir, self._lost_races = dest_dir, 0
        else:
            self._lost_races += 1
        return moved

    def _dead_letter_if_room(self, path: str, message_id: str, attempts: int, why: str) -> None:
        """Dead-letter, unless the disk is full: then the message waits (in ready/, or as a
        dying file that recovery finishes) and consumers go on with the others."""
        try:
            self.dead_letter(path, message_id, attempts, why)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise

    def as_message(
        self, record: Record, attempts: int, receipt: str | None, visible_until: int | None
    ) -> Message:
        meta = self.live_meta(record.meta)
        group = meta.get("group")
        if group is not None:
            meta = {key: value for key, value in meta.items() if key != "group"}
        return Message(  # by position: keywords cost every dequeue 0.8 µs more
            record.id,
            receipt,
            self.stream,
            record.data,
            record.data_json,
            attempts,
            utc_from_ns(id_time_ns(record.id)),
            None if visible_until is None else utc_from_ns(visible_until),
            meta,
            None,  # state: a delivery's is not told
            group if isinstance(group, str) else None,
        )

    def live_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        return meta if self.graveyard is None else live_metadata(meta, self.stream)

    # -- settle a delivery -----------------------------------------------------------------

    def _delivery_paths(self, lease: TimedName, receipt: str | None = None) -> Iterator[str]:
        """Where the delivery's file can be while the receipt is good, most likely first
        (receipt: the lease's name, if the caller has it)."""
        if receipt is None:
            receipt = str(lease)
        moved = self._extended.get(receipt)
        if moved is not None:
            yield f"{self.inflight.leaf_dir(moved)}/{moved}"
        yield f"{self.inflight.leaf_dir(receipt)}/{receipt}"
        # Expired and reaped, but nobody has leased it again: the delivery has not ended.
        expired = ReadyName(lease.id, lease.attempts, lease.token)
        yield f"{self.ready.leaf_dir(lease.id)}/{expired}"
        # Extended by another process: the same delivery under a later deadline.
        suffix = receipt[16:]
        for leaf, name in self.inflight.all_names(self.clock()):
            if name.endswith(suffix) and len(name) == len(receipt) and name != moved:
                yield os.path.join(leaf.path, name)

    def _lost(self, lease: TimedName) -> LeaseLost:
        self._extended.pop(str(lease), None)
        return LeaseLost(
            f"the lease on message {lease.id} (delivery {lease.attempts}) has ended: it was "
            "acked, nacked, dead-lettered, or expired and was delivered again"
        )

    def ack(self, lease: TimedName, name: str | None = None) -> None:
        """End the delivery: the message is done. name: the lease's, if the caller has it."""
        if self.groups is not None and is_group_token(lease.token):
            self._ack_grouped(lease)
            return
        for path in self._delivery_paths(lease, name):
            try:
                self.pool.give(path)
            except FileNotFoundError:
                continue
            except NotOurs as exc:  # what the receipt names is not a message: the lease ends
                self.set_aside(path, exc)
            if self._extended:
                self._extended.pop(str(lease), None)
            return
        raise self._lost(lease)

    def _ack_grouped(self, lease: TimedName) -> None:
        """Ack a group's head: the file is locked and renamed into tmp/ as *.leaving (which
        ends the delivery and is the intent recovery finishes), the group released, then the
        file recycled."""
        for path in self._delivery_paths(lease):
            try:
                fd = try_lock(path)
            except NotOurs as exc:
                self.set_aside(path, exc)
                break
            if fd is None:
                continue  # being dead-lettered: the delivery is ending anyway
            try:
                leaving = os.path.join(
                    self.tmp, f"{lease.id}.{lease.attempts}.{lease.token}.leaving"
                )
                try:
                    os.rename(path, leaving)
                except FileNotFoundError:
                    continue
                self.leave(fd, leaving, lease.id)
            finally:
                os.close(fd)
            self._extended.pop(str(lease), None)
            unlink_quietly(leaving)
            return
        raise self._lost(lease)

    def leave(self, fd: int, leaving: str, message_id: str) -> None:
        """Release the group of the locked leaving file fd (recovery calls this too)."""
        found = self._dying_record(fd, leaving, message_id)
        if isinstance(found, NotOurs):
            return
        key = found.meta.get("group")
        if isinstance(key, str) and self.groups is not None:
            self.groups.release(group_of(key), message_id)

    def nack(
        self,
        lease: TimedName,
        delay_ns: int,
        reason: str | None,
        max_attempts: int | None,
        *,
        counts: bool = True,
    ) -> None:
        """End the delivery: back to ready (after delay_ns), or dead-lettered if it was the last.

        counts=False releases it as if this delivery never happened (a worker shutting down).
        """
        attempts = lease.attempts if counts else lease.attempts - 1
        now = self.clock()
        for path in self._delivery_paths(lease):
            if counts and max_attempts is not None and attempts >= max_attempts:
                if self.dead_letter(path, lease.id, attempts, reason or "nacked"):
                    break
                continue
            if counts and reason is not None and self.is_dead_letter_queue:
                # A dead letter's handler failed: the dead letter keeps why (bury).
                if self._rewrite(path, lease.id, attempts, reason, now + max(delay_ns, 0)):
                    break
                continue
            if delay_ns > 0:
                due = now + delay_ns
                dest, name = (
                    self.delayed.leaf_dir(f"{due:016x}"),
                    str(TimedName(due, lease.id, attempts)),
                )
            else:
                dest, name = self.ready.leaf_dir(lease.id), str(ReadyName(lease.id, attempts))
            if place(path, dest, name, durable_dirs=self.durable, flush=False):
                self._arrived(now, delay_ns)
                if delay_ns <= 0:
                    self.forget_head()
                break
        else:
            raise self._lost(lease)
        self._extended.pop(str(lease), None)

    def reject(self, lease: TimedName, reason: str) -> None:
        """End the delivery by dead-lettering the message now, whatever attempts it has left."""
        for path in self._delivery_paths(lease):
            if self.dead_letter(path, lease.id, lease.attempts, reason):
                self._extended.pop(str(lease), None)
                return
        raise self._lost(lease)

    def extend(self, lease: TimedName, visibility_ns: int) -> int:
        deadline = self.clock() + visibility_ns
        moved = TimedName(deadline, lease.id, lease.attempts, lease.token)
        dest = self.inflight.leaf_dir(f"{deadline:016x}")
        for path in self._delivery_paths(lease):
            if place(path, dest, str(moved), durable_dirs=self.durable, flush=False):
                self._extended[str(lease)] = str(moved)
                self._note_due(deadline)
                return deadline
        raise self._lost(lease)

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, path: str, message_id: str, attempts: int, error: str) -> bool:
        """Move the file at path to the dead-letter queue; False if someone else moved it first.

        A dead letter never dies again: in a dead-letter queue this leaves the file where it is
        and returns False.
        """
        if self.graveyard is None:
            return False
        return self._rewrite(path, message_id, attempts, error, 0)

    def _rewrite(
        self, path: str, message_id: str, attempts: int, error: str | None, due_ns: int
    ) -> bool:
        """Rewrite the message file at path with error in its metadata (bury, below); False if
        someone else moved it first.

        The file is locked, then renamed into tmp/ (which makes it ours), then written anew. A
        crash in between leaves tmp/*.dying, locked by nobody, which recovery.py finishes; so
        does a full disk, which leaves the dying file for recovery to finish once there is room
        (the delivery has ended either way). What is not a message file is set aside instead.
        """
        try:
            fd = try_lock(path)
        except NotOurs as exc:
            return self.set_aside(path, exc)
        if fd is None:
            return False
        try:
            dying = os.path.join(self.tmp, f"{message_id}.{attempts}.dying")
            try:
                os.rename(path, dying)
            except FileNotFoundError:
                return False
            try:
                self.bury(fd, dying, message_id, attempts, error, due_ns)
            except OSError as exc:
                if exc.errno not in _DISK_FULL:
                    raise
            return True
        finally:
            os.close(fd)

    def bury(
        self,
        fd: int,
        dying: str,
        message_id: str,
        attempts: int,
        error: str | None,
        due_ns: int = 0,
        *,
        recovering: bool = False,
    ) -> None:
        """Write the record of the locked dying file fd anew, then remove the dying file.

        In a stream: it becomes a dead letter, with metadata.dead saying why (error). In a
        dead-letter queue: a dead letter whose handler failed goes back, keeping why in
        metadata.dead.dlq_error (None: unchanged, as recovery refiles it). A dying file that is
        not that message's file is set aside instead.
        """
        found = self._dying_record(fd, dying, message_id)
        if isinstance(found, NotOurs):
            self.set_aside(dying, found)
            return
        group = found.meta.get("group")
        if isinstance(group, str) and self.groups is not None:
            # While the dying file is the intent (recovery finishes it), the group's next
            # goes out.
            self.groups.release(group_of(group), message_id)
        target = self.graveyard or self
        forward = self.dead_letter_stream() if self.graveyard is not None else None
        if forward is not None:
            target, attempts_there = forward, 0  # an ordinary message there, from its start
        else:
            attempts_there = attempts
        if recovering and target.find(message_id) is not None:
            # After a power loss (both names can survive a rename on a file system without a
            # journal) the dead letter may be filed already.
            os.unlink(dying)
            return
        meta = dict(found.meta)
        now = iso_utc(self.clock())
        if forward is not None:
            meta.pop("group", None)  # not ordered in the dead-letter stream: kept as a fact
        earlier = meta.get("dead")
        if self.graveyard is not None and not died_elsewhere(meta, self.stream):
            meta["dead"] = {
                "stream": self.stream,
                "error": (error or "")[:MAX_ERROR_CHARS],
                "attempts": attempts,
                "died_at": now,
            }
            if forward is not None and isinstance(group, str):
                meta["dead"]["group"] = group
        elif error is not None:
            # A dead letter's handler failed, here in a dead-letter queue or in a dead-letter
            # stream (whose own dead letters keep the stream they first died in).
            dead = dict(earlier) if isinstance(earlier, dict) else {"stream": self.stream}
            dead["dlq_error"] = error[:MAX_ERROR_CHARS]
            dead["dlq_failed_at"] = now
            meta["dead"] = dead
        content = encode(message_id, self.stream, id_time_ns(message_id), found.data_json, meta)
        # The new record takes the dying file's place (written beside it, locked, flushed, then
        # renamed over it), and one rename files it: a crash leaves either the dying file for
        # recovery, or the dead letter, never both (which a redrive in between would turn into
        # a second delivery of a message already acked).
        fresh = f"{dying}.{new_token()}.w"
        wfd, recycled = self.pool.open_new(fresh)
        fill_locked(wfd, fresh, content, durable=self.durable, recycled=recycled)
        try:
            os.rename(fresh, dying)
            target.file_in(dying, message_id, attempts_there, due_ns)
        except BaseException:
            unlink_quietly(fresh)
            raise
        finally:
            os.close(wfd)

    @staticmethod
    def _dying_record(fd: int, dying: str, message_id: str) -> Record | NotOurs:
        st = os.fstat(fd)
        if not os.path.samestat(st, os.lstat(dying)) or st.st_size > MAX_RECORD_BYTES:
            return NotOurs("not a message file", shared=st.st_nlink > 1)
        return _vetted(os.pread(fd, st.st_size, 0), st, message_id)

    def remove(self, ids: list[str] | None) -> list[str]:
        removed: list[str] = []
        emptied: set[str] = set()
        for path, message_id, _ in self.entries(ids, self.clock()):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(message_id)
            emptied.add(os.path.dirname(path))
        self.flush_dirs(emptied)  # or a power loss could bring them back
        return removed

    def flush_dirs(self, dirs: set[str]) -> None:
        if not self.durable:
            return
        for path in dirs:
            try:
                fsync_dir(path)
            except FileNotFoundError:
                continue  # pruned: its removal is what a crash keeps or undoes

    def entries(self, ids: list[str] | None, now: int) -> Iterator[tuple[str, str, str]]:
        """(path, id, state) of every message in this store, or of those with the given ids
        (NotFound for an id that is not here), whatever their state: ready, delayed, or leased.

        A dead-letter queue's by-id and all-at-once operations go through here, so that listing,
        redriving and purging agree about a dead letter a consumer holds or will retry.
        """
        if ids is None:
            for state, tree, parse in self.states():
                for leaf, name in tree.all_names(now):
                    parsed = parse(name)
                    if parsed is not None:
                        yield os.path.join(leaf.path, name), parsed.id, state
            return
        for message_id in ids:
            found = self.find(message_id)
            if found is None:
                raise self.not_found(message_id)
            yield found[0], message_id, found[1]

    def states(
        self,
    ) -> tuple[tuple[str, Tree, Callable[[str], ReadyName | TimedName | None]], ...]:
        return (
            ("ready", self.ready, parse_ready),
            ("delayed", self.delayed, parse_timed),
            ("inflight", self.inflight, parse_timed),
        )

    def find(self, message_id: str) -> tuple[str, str] | None:
        """The path and state of the message with this id, if it is in this store."""
        leaf = self.ready.leaf_dir(message_id)
        for name in listdir(leaf):
            if name.startswith(message_id + ".") and parse_ready(name) is not None:
                return os.path.join(leaf, name), "ready"
        for state, tree in (("delayed", self.delayed), ("inflight", self.inflight)):
            for found_leaf, name in tree.all_names(self.clock()):
                if name[17:41] == message_id:
                    return os.path.join(found_leaf.path, name), state
        return None

    def not_found(self, message_id: str) -> NotFound:
        if self.is_dead_letter_queue:
            return NotFound(
                f"no dead letter with id {message_id} in the dead letters of stream {self.stream!r}"
            )
        return NotFound(f"no message with id {message_id} in stream {self.stream!r}")

    # -- reap ------------------------------------------------------------------------------

    def _note_due(self, at_ns: int) -> None:
        self._next_reap_ns = min(self._next_reap_ns, at_ns)

    def maybe_reap(self, now: int, max_attempts: int | None) -> None:
        if now >= self._next_reap_ns:
            self.reap(now, max_attempts)

    def next_due_ns(self) -> int:
        return self._next_reap_ns

    def reap(self, now: int, max_attempts: int | None) -> None:
        """Expired leases back to ready (or to the dead letters), due delayed messages to ready."""
        if not self._reaping.acquire(blocking=False):
            return  # another thread of this process is at it
        try:
            self._next_reap_ns = now + REAP_INTERVAL_NS
            # First: a crashed batch or dead-lettering it finishes may place messages that are
            # due now, which the trees' reap below then moves like any other.
            try:
                returned = bool(clean_tmp(self))
            except (OSError, EphqError):
                returned = False  # best effort here (a full disk, say); check() runs it too
            returned |= self._release_orphans(now, max_attempts)
            returned |= self._reap_tree(self.inflight, now, max_attempts)
            returned |= self._reap_tree(self.delayed, now, None)
        finally:
            self._reaping.release()
        if returned:
            self.forget_head()
            self.ring()

    def _release_orphans(self, now: int, max_attempts: int | None) -> bool:
        """Leases of a worker that died come back now, as if they had run out, instead of at
        their deadlines (holders.py: a worker's flocked file names its leases)."""
        returned = False
        for lease in orphaned_leases(self.holders_dir, self.is_dead_letter_queue):
            path = self._inflight_path(lease)
            if path is None:
                continue  # settled, or already back
            if max_attempts is not None and lease.attempts >= max_attempts:
                self._dead_letter_if_room(path, lease.id, lease.attempts, "its worker died")
                continue
            back = ReadyName(lease.id, lease.attempts, lease.token)
            returned |= place(
                path,
                self.ready.leaf_dir(lease.id),
                str(back),
                durable_dirs=self.durable,
                flush=False,
            )
        return returned

    def _inflight_path(self, lease: TimedName) -> str | None:
        """Where the delivery's file is in inflight/, under its first deadline or a later one."""
        name = str(lease)
        path = f"{self.inflight.leaf_dir(name)}/{name}"
        if os.path.lexists(path):
            return path
        suffix = name[16:]
        for leaf, found in self.inflight.all_names(self.clock()):
            if found.endswith(suffix) and len(found) == len(name):
                return os.path.join(leaf.path, found)
        return None

    def _reap_tree(self, tree: Tree, now: int, max_attempts: int | None) -> bool:
        returned = False
        for leaf in tree.leaves(now):
            start, _ = leaf.window()
            if start > now:
                self._note_due(start)
                break
            for name in listdir(leaf.path):
                timed = parse_timed(name)
                if timed is None:
                    continue
                if timed.at_ns > now:
                    self._note_due(timed.at_ns)
                    continue
                path = os.path.join(leaf.path, name)
                if max_attempts is not None and timed.attempts >= max_attempts:
                    self._dead_letter_if_room(path, timed.id, timed.attempts, "lease expired")
                    continue
                back = ReadyName(timed.id, timed.attempts, timed.token)
                try:
                    back_dir = self.ready.leaf_dir(timed.id)
                    returned |= place(
                        path, back_dir, str(back), durable_dirs=self.durable, flush=False
                    )
                except OSError as exc:
                    if exc.errno not in _DISK_FULL:
                        raise
                    self._note_due(now)  # no room for its ready/ directory yet: look again soon
            tree.prune(leaf, now)
        return returned

    def purge(self) -> int:
        """Remove every message in ready/, delayed/ and inflight/; how many there were.

        Each state directory is renamed aside in one step, so consumers see it empty at once and
        the deleting happens out of sight. The pool is emptied too: purge is how a full disk is
        given room.
        """
        clean_tmp(self)  # what a crash left promised in tmp/ is a message: placed, then purged
        token = new_token()
        aside: list[str] = []
        roots = [tree.root for tree in (self.ready, self.delayed, self.inflight)]
        if self.groups is not None:
            roots.append(self.groups.dir)  # their waiting messages, and their heads
        for root in roots:
            out = os.path.join(self.tmp, f"purge-{token}-{os.path.basename(root)}")
            try:
                os.rename(root, out)
            except FileNotFoundError:
                continue
            aside.append(out)
        self.forget_head()
        for tree in (self.ready, self.delayed, self.inflight):
            try:
                ensure_dir(tree.root, durable=False)  # flushed with the purge, just below
            except OSError as exc:  # no room: the next writer makes it
                if exc.errno not in _DISK_FULL:
                    raise
        if self.durable:
            # What was purged stays purged after a power loss, and the new state directories
            # are there for the durable writes that follow.
            fsync_dir(self.path)
        removed = sum(sweep.count(out) for out in aside)
        # Deleting can take minutes (a discard for each file): a sweeper does it, unless the
        # disk is low on space, where freeing it is what the caller is waiting for.
        if aside and (self.pool.low_on_space() or not sweep.spawn(self.quarantine.base, aside)):
            for out in aside:
                sweep.clear(out, self.quarantine)
        self.pool.free_all()
        return removed

    def ring(self) -> None:
        """Wake consumers long-polling this store (they watch the bell with inotify)."""
        try:
            os.utime(self.bell, follow_symlinks=False)
        except FileNotFoundError:
            pass


def _none() -> None:
    return None


def _vetted(raw: bytes, st: os.stat_result, message_id: str) -> Record | NotOurs:
    """The record of message_id if raw is that message's file; else why not.

    The one rule for every reader: a record of another id is a stale name a power loss left
    on a recycled file (or a copy), and a file with a second name can be dropped from the
    store without losing a byte (NotOurs.shared).
    """
    shared = st.st_nlink > 1
    try:
        record = decode(raw)
    except CorruptRecord as exc:
        return NotOurs(str(exc), shared=shared)
    if record.id != message_id:
        return NotOurs(f"holds message {record.id}", shared=shared)
    return record
