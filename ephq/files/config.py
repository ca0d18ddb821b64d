"""A stream's settings, persisted as stream.json beside its state directories.

Reads are cached per process and re-read only when the file was replaced (configure writes a new
file and renames it over the old one, so a changed inode means changed settings).
"""

from __future__ import annotations

import json
import os

from ..message import StreamConfig
from .fsio import FILE_MODE, fsync_dir, unlink_quietly, write_all

CONFIG_FILE = "stream.json"


class ConfigFile:
    def __init__(self, stream_dir: str) -> None:
        self.path = os.path.join(stream_dir, CONFIG_FILE)
        self._seen: tuple[int, int] | None = None
        self._config = StreamConfig()

    def load(self) -> StreamConfig:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._config = None, StreamConfig()
            return self._config
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._seen:
            self._config = self._parse()
            self._seen = stamp
        return self._config

    def _parse(self) -> StreamConfig:
        try:
            with open(self.path, "rb") as handle:
                doc = json.load(handle)
            return StreamConfig(int(doc["max_attempts"]), float(doc["visibility"]))
        except (OSError, ValueError, KeyError, TypeError):
            # A damaged settings file must not stop the stream; check() reports it.
            return StreamConfig()

    def save(self, config: StreamConfig, *, durable: bool) -> None:
        doc = {"format": 1, "max_attempts": config.max_attempts, "visibility": config.visibility}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(fd, (json.dumps(doc) + "\n").encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, self.path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        if durable:
            fsync_dir(os.path.dirname(self.path))
