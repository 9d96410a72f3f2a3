"""`Outage`: when a dependency's failures begin an outage and when a success ends it, so that
its owner logs an outage once and its end once, however many failures lie between.

An outage begins with the first failure while none is on (at start, or after a success) and
ends with the first success after it; `failed` and `succeeded` say when, and the end tells how
many failures the outage counted and how long it lasted. What is logged, and which counters
move, is the owner's: this module only keeps the state. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class OutageEnded:
    """An outage that a success has just ended."""

    failures: int  # failures counted from its beginning to its end
    duration_s: float  # from its first failure to the success that ended it


class Outage:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # True from the first failure of an outage until the success that ends it. Read it,
        # never set it: a plain attribute, because owners read it on every call they guard.
        self.ongoing = False
        self._since = 0.0
        self._failures = 0

    def failed(self) -> bool:
        """Count a failure; True when it begins an outage (the one failure to log)."""
        with self._lock:
            self._failures += 1
            if self.ongoing:
                return False
            self.ongoing, self._since = True, self._clock()
            return True

    def succeeded(self) -> OutageEnded | None:
        """Note a success: the outage it ends, or None when none was on (the common case,
        answered without taking the lock)."""
        if not self.ongoing:
            return None
        with self._lock:
            if not self.ongoing:  # another thread's success ended it first
                return None
            since, failures = self._since, self._failures
            self.ongoing, self._failures = False, 0
        return OutageEnded(failures, self._clock() - since)
