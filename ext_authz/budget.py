"""A per-client-address budget of failed authentications, so that one address cannot spend the
server's CPU on garbage tokens.

`FailureBudget(limit, window_s)`: an address that failed `limit` times within the current
window of `window_s` seconds is blocked until the window ends (the core then answers 429 with
`Retry-After`, without verifying anything, except for tokens already verified and cached).
Windows are fixed and aligned to the clock: cheap (one dict lookup per check) and strict
enough, since the budget protects CPU, not a quota a client plans against. At most `max_keys`
addresses are tracked (least recently failed dropped first), so memory stays bounded whatever
the number of addresses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sidecar_shared.bounded import BoundedMap


class FailureBudget:
    def __init__(
        self, limit: int, window_s: int, clock: Callable[[], float], max_keys: int = 100_000
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        # address -> (window index, failures in it)
        self._failures: BoundedMap[str, tuple[int, int]] = BoundedMap(max_keys)
        self._lock = threading.Lock()

    def blocked(self, address: str) -> int:
        """Seconds until `address` may try again; 0 when it may now. Never raises."""
        if self._limit <= 0:
            return 0
        entry = self._failures.get(address)
        if entry is None or entry[1] < self._limit:
            return 0
        now = self._clock()
        window = int(now // self._window_s)
        if entry[0] != window:
            return 0
        return max(1, int((window + 1) * self._window_s - now + 0.999))

    def fail(self, address: str) -> None:
        """Count one failed authentication of `address`."""
        if self._limit <= 0:
            return
        window = int(self._clock() // self._window_s)
        with self._lock:
            seen, count = self._failures.get(address, (window, 0))
            self._failures[address] = (window, count + 1 if seen == window else 1)

    def __len__(self) -> int:
        return len(self._failures)
