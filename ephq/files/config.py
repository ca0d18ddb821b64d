"""A stream's settings, persisted as stream.json beside its state directories.

Reads are cached per process and re-read only when the file was replaced (configure writes a new
file and renames it over the old one, so a changed inode means changed settings).
"""

from __future__ import annotations

import json
import math
import os
import stat

from ..message import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES,
    MIN_MAX_MESSAGE_BYTES,
    StreamConfig,
)
from .fsio import NotOurs, read_regular, replace_file
from .names import is_stream_name, new_token

CONFIG_FILE = "stream.json"
MAX_CONFIG_BYTES = 65536


class ConfigFile:
    def __init__(self, stream_dir: str) -> None:
        self.path = os.path.join(stream_dir, CONFIG_FILE)
        self._seen: tuple[int, int] | None = None
        self._config = StreamConfig()

    def load(self) -> StreamConfig:
        # Most streams are never configured, and every dequeue looks: asking whether the file
        # is there costs a third of an lstat that fails (no exception raised and caught).
        if self._seen is None and not os.access(self.path, os.F_OK, follow_symlinks=False):
            self._config = StreamConfig()
            return self._config
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):  # absent, or not ours: check reports it
            self._seen, self._config = None, StreamConfig()
            return self._config
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._seen:
            self._config = self._parse()
            self._seen = stamp
        return self._config

    def _parse(self) -> StreamConfig:
        try:
            return parse(read_regular(self.path, MAX_CONFIG_BYTES)[0])
        except (OSError, NotOurs, ValueError, KeyError, TypeError):
            # A damaged settings file must not stop the stream; check() reports it.
            return StreamConfig()

    def save(self, config: StreamConfig, *, durable: bool) -> None:
        doc = {
            "format": 1,
            "max_attempts": config.max_attempts,
            "visibility": config.visibility,
            "max_size": config.max_size,
            "dedup_window": config.dedup_window,
            "dead_letter_stream": config.dead_letter_stream,
        }
        # In tmp/ as a .w file: if this process dies, recovery removes it (recovery.py).
        tmp = os.path.join(os.path.dirname(self.path), "tmp", f"{CONFIG_FILE}.{new_token()}.w")
        replace_file(tmp, self.path, (json.dumps(doc) + "\n").encode(), durable=durable)


def parse(raw: bytes) -> StreamConfig:
    """Settings from stream.json's bytes; ValueError, KeyError or TypeError if they do not parse."""
    doc = json.loads(raw)
    max_attempts, visibility = int(doc["max_attempts"]), float(doc["visibility"])
    if max_attempts < 1 or not (visibility > 0 and math.isfinite(visibility)):
        raise ValueError("max_attempts and visibility must be positive")
    max_size = int(doc.get("max_size", DEFAULT_MAX_MESSAGE_BYTES))  # absent before 0.2
    if not MIN_MAX_MESSAGE_BYTES <= max_size <= MAX_MESSAGE_BYTES:
        raise ValueError("max_size is out of bounds")
    dedup_window = float(doc.get("dedup_window", StreamConfig.dedup_window))  # absent before 0.3
    if not (dedup_window > 0 and math.isfinite(dedup_window)):
        raise ValueError("dedup_window must be positive")
    dead_letter_stream = doc.get("dead_letter_stream")
    if dead_letter_stream is not None and not is_stream_name(dead_letter_stream):
        raise ValueError("dead_letter_stream is not a stream's name")
    return StreamConfig(max_attempts, visibility, max_size, dedup_window, dead_letter_stream)
