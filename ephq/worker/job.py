"""One leased message in a worker's hands, from its lease until it is settled."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..message import Message


@dataclass
class Job:
    message: Message
    cancelled: threading.Event = field(default_factory=threading.Event)
    extend_at: float = 0.0  # time.monotonic() when its lease is extended (tending.py)
    lost: bool = False  # its lease could not be extended: settling it will say so
    leased_at_ns: int = field(default_factory=time.time_ns)
    began: bool = False  # a handler thread took it (else it is held ahead, waiting for one)
    ended: bool = False  # its handler returned (it may still be being settled)
