"""Deduplication keys: an enqueue whose key the stream saw within its window stores nothing.

    <stream>/keys/<hh>/<30 hex>      {"key": …, "id": …, "at": …}
                                     the key's first message, and when the key was taken (ns)
    <stream>/keys/<hh>/<30 hex>.<token>.w    a key being written
    <stream>/keys/pruned             touched when expired keys were last removed

A key's file is named by its SHA-256 (the first 32 hex digits, the first two a directory of
their own, so no directory holds more than 1/256 of the keys). The key's text is kept inside
and compared, so two keys never share an entry.

An enqueue with keys flocks the directories of its keys (in name order: two batches never wait
for each other in a circle), looks each key up, stores only the messages whose keys are new,
then records those keys, and only then unlocks. So two producers racing with one key are
serialised: the second finds the first's key and gets its message's id. The message is
committed before its key is recorded: a crash in between leaves a message without a key (a
retry may then store it again: a duplicate, which at-least-once delivery allows), never a key
without its message (which would make the retry's message vanish).

Keys are forgotten when their window has passed: an enqueue with a key removes expired ones
when the last such sweep is older than half the window (at most an hour, at least a second),
each directory under its lock. Nothing is done for enqueues without keys.

What is read is not trusted: a key file that is not a regular file holding a key record is
treated as absent (and replaced); `check` reports it.
"""

import errno
import fcntl
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

from ..errors import StorageError
from .fsio import listdir, write_all
from .names import is_id, new_token
from .quarantine import Quarantine

KEYS = "keys"
PRUNED = "pruned"
KEY_NAME = re.compile(r"[0-9a-f]{30}", re.ASCII)
BUCKET_NAME = re.compile(r"[0-9a-f]{2}", re.ASCII)
MAX_KEY_FILE_BYTES = 4096
_NS = 1_000_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO: no hang
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Commit = Callable[[list[int]], list[str]]  # stores the items at these indices; their new ids


class KeyRecord(NamedTuple):
    key: str
    id: str
    at_ns: int


def key_path(key: str) -> tuple[str, str]:
    """The directory and file name of a key's entry."""
    import hashlib  # here: its OpenSSL binding costs ~14 ms of every command's start-up

    digest = hashlib.sha256(key.encode()).hexdigest()
    return digest[:2], digest[2:32]


def parse_key_file(raw: bytes) -> KeyRecord | None:
    """The record a key file holds; None if it does not hold one."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    key, message_id, at = doc.get("key"), doc.get("id"), doc.get("at")
    if not isinstance(key, str) or not isinstance(message_id, str) or not is_id(message_id):
        return None
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        return None
    return KeyRecord(key, message_id, at)


def prune_interval_ns(window_ns: int) -> int:
    return min(max(window_ns // 2, _NS), 3600 * _NS)


class DedupKeys:
    """One stream's deduplication keys."""

    def __init__(
        self,
        stream_path: str,
        quarantine: Quarantine,
        *,
        durable: bool,
        clock: Callable[[], int],
    ) -> None:
        self.dir = os.path.join(stream_path, KEYS)
        self.quarantine = quarantine
        self.durable = durable
        self.clock = clock
        self._next_prune_ns = 0

    def enqueue(self, keys: list[str | None], window_ns: int, commit: Commit) -> list[str]:
        """The id for each item: where its key was taken within the window (or earlier in
        this batch), the first message's; else a new message's, stored by commit."""
        buckets = sorted({key_path(k)[0] for k in keys if k is not None})
        with self._locked(buckets) as fds:
            now = self.clock()
            ids = [""] * len(keys)
            owner: dict[str, int] = {}  # key -> the index of its first item in this batch
            fresh: list[int] = []  # the items to store
            for index, key in enumerate(keys):
                if key is not None:
                    if key in owner:
                        continue
                    owner[key] = index
                    known = self._lookup(fds, key)
                    if known is not None and now - known.at_ns < window_ns:
                        ids[index] = known.id
                        continue
                fresh.append(index)
            for index, message_id in zip(fresh, commit(fresh) if fresh else [], strict=True):
                ids[index] = message_id
            stored = set(fresh)
            self._record(fds, [(k, ids[i]) for k, i in owner.items() if i in stored], now)
        self._maybe_prune(window_ns)
        return [ids[i] if k is None else ids[owner[k]] for i, k in enumerate(keys)]

    # -- the directories -------------------------------------------------------------------

    @contextmanager
    def _locked(self, buckets: list[str]) -> Iterator[dict[str, int]]:
        """Each bucket's directory open and flocked, in the order given."""
        with ExitStack() as stack:
            keys_fd = self._open_dir(None, self.dir)
            stack.callback(os.close, keys_fd)
            fds: dict[str, int] = {}
            for bucket in buckets:
                fd = self._open_dir(keys_fd, bucket)
                stack.callback(os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
                fds[bucket] = fd
            yield fds

    def _open_dir(self, parent: int | None, name: str) -> int:
        """A directory's fd (relative to parent's), made if missing, never through a link:
        anything else standing there is set aside."""
        for _ in range(3):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o700, dir_fd=parent)
                except FileExistsError:
                    continue
                if self.durable:  # the new directory's name, into its parent
                    up = os.open(
                        "." if parent is not None else os.path.dirname(name),
                        _DIR_FLAGS,
                        dir_fd=parent,
                    )
                    try:
                        os.fsync(up)
                    finally:
                        os.close(up)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = name if parent is None else os.path.join(self.dir, name)
                if not self.quarantine.take(where):
                    raise StorageError(
                        f"{where} is not a directory ephq made for deduplication keys, and "
                        "cannot be set aside"
                    ) from None
        return os.open(name, _DIR_FLAGS, dir_fd=parent)

    def _lookup(self, fds: dict[str, int], key: str) -> KeyRecord | None:
        bucket, name = key_path(key)
        found = _read_at(fds[bucket], name)
        return found if found is not None and found.key == key else None

    def _record(self, fds: dict[str, int], taken: list[tuple[str, str]], now: int) -> None:
        """Write each key's entry (replacing an expired or damaged one) and flush them."""
        touched = set()
        for key, message_id in taken:
            bucket, name = key_path(key)
            fd = fds[bucket]
            tmp = f"{name}.{new_token()}.w"
            body = json.dumps({"key": key, "id": message_id, "at": now}).encode()
            out = os.open(tmp, _NEW_FLAGS, 0o600, dir_fd=fd)
            try:
                write_all(out, body)
                if self.durable:
                    os.fsync(out)
            finally:
                os.close(out)
            try:
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except IsADirectoryError:  # something else stands there: check sets it aside
                os.unlink(tmp, dir_fd=fd)
                continue
            touched.add(fd)
        if self.durable:
            for fd in touched:
                os.fsync(fd)

    # -- forgetting ------------------------------------------------------------------------

    def _maybe_prune(self, window_ns: int) -> None:
        now = self.clock()
        if now < self._next_prune_ns:
            return
        interval = prune_interval_ns(window_ns)
        self._next_prune_ns = now + interval
        stamp = os.path.join(self.dir, PRUNED)
        try:
            st = os.lstat(stamp)
            if stat.S_ISREG(st.st_mode) and 0 <= now - st.st_mtime_ns < interval:
                return  # another process swept lately
        except FileNotFoundError:
            pass
        self.prune(window_ns)
        try:
            fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # something else stands there: check reports it
        try:
            os.utime(fd, ns=(now, now))
        finally:
            os.close(fd)

    def prune(self, window_ns: int) -> int:
        """Remove every key older than the window (and what crashed writers left); how many."""
        removed = 0
        for bucket in sorted(listdir(self.dir)):
            if BUCKET_NAME.fullmatch(bucket) is None:
                continue
            try:
                locked = self._locked_existing(bucket)
            except OSError:
                continue
            with locked as fd:
                now = self.clock()
                for name in os.listdir(fd):
                    if name.endswith(".w"):  # under the lock, no writer is at it
                        _unlink_at(fd, name)
                    elif KEY_NAME.fullmatch(name):
                        found = _read_at(fd, name)
                        if found is not None and now - found.at_ns >= window_ns:
                            removed += _unlink_at(fd, name)
        return removed

    @contextmanager
    def _locked_existing(self, bucket: str) -> Iterator[int]:
        keys_fd = os.open(self.dir, _DIR_FLAGS)
        try:
            fd = os.open(bucket, _DIR_FLAGS, dir_fd=keys_fd)
        finally:
            os.close(keys_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def entries(self) -> Iterator[tuple[str, KeyRecord | None, int]]:
        """Every entry of the keys directory, for check: path, record (None: not one), mode."""
        for bucket in sorted(listdir(self.dir)):
            path = os.path.join(self.dir, bucket)
            yield path, None, _lmode(path)
            if BUCKET_NAME.fullmatch(bucket) is None or not stat.S_ISDIR(_lmode(path)):
                continue
            try:
                fd = os.open(path, _DIR_FLAGS)  # never through a link put there meanwhile
            except OSError:
                continue
            try:
                for name in sorted(os.listdir(fd)):
                    child = os.path.join(path, name)
                    record = _read_at(fd, name) if KEY_NAME.fullmatch(name) else None
                    yield child, record, _lmode(child)
            finally:
                os.close(fd)


def _read_at(dir_fd: int, name: str) -> KeyRecord | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:  # absent, a link, or unreadable: no key
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_FILE_BYTES:
            return None
        return parse_key_file(os.read(fd, MAX_KEY_FILE_BYTES + 1))
    finally:
        os.close(fd)


def _unlink_at(dir_fd: int, name: str) -> int:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return 0
    return 1


def _lmode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0
