"""The quarantine: where ephq moves what it finds in its store but did not put there.

    <stream>/quarantine/<when>.<token>.<where it was, with '/' as '%'>

A stray file, a link, a directory where a message belongs, a message file that does not hold its
message: each is moved here by one rename of the thing itself (a link is moved, never followed; a
directory moves whole), so its bytes are kept exactly as they were for a person to look at, and
nothing ephq reads or writes goes near it again. `check` lists what is here; deleting it is the
operator's call.

A regular file that has another name is not quarantined but dropped from the store: unlinking one
name of a file loses no byte (the other name keeps them), and quarantining it would keep a second
name on whatever the other one is (after a power loss, a live message).
"""

from __future__ import annotations

import os
import time

from ..errors import StorageError
from .fsio import NotOurs, is_real_dir, place, unlink_quietly
from .groups import touch_group_of
from .names import new_token

QUARANTINE = "quarantine"
HOME_QUARANTINE = ".quarantine"  # in the home, for what stands where a stream would be
_NAME_BYTES = 240  # under NAME_MAX (255) with room to spare


class Quarantine:
    def __init__(self, base: str, name: str = QUARANTINE) -> None:
        self.base = base
        self.dir = os.path.join(base, name)

    def entry_name(self, path: str) -> str:
        where = os.path.relpath(path, self.base).replace("/", "%")
        name = f"{time.time_ns():016x}.{new_token()}.{where}"
        return os.fsencode(name)[:_NAME_BYTES].decode(errors="ignore")

    def take(self, path: str) -> bool:
        """Move what is at path into the quarantine; False if it was gone or cannot be moved.

        It cannot be moved when the quarantine itself is not a directory (check reports that)
        or the disk has no room for the quarantine's directory; it then stays where it is,
        skipped by every reader.
        """
        if is_real_dir(self.dir) is False:
            return False
        try:
            taken = place(path, self.dir, self.entry_name(path), durable_dirs=False, flush=False)
        except (OSError, StorageError):
            return False
        touch_group_of(self.base, path)  # a name gone from a group's tree: counted again
        return taken

    def set_aside(self, path: str, problem: NotOurs) -> bool:
        """Take a foreign thing out of the store's way: drop a second name, quarantine the rest."""
        if problem.shared:
            unlink_quietly(path)
            touch_group_of(self.base, path)
            return True
        return self.take(path)

    def entries(self) -> list[str]:
        if not is_real_dir(self.dir):
            return []
        return sorted(os.listdir(self.dir))
