"""A per-client-address budget of failed authentications: a flood of bad tokens costs the
address that sends it, never a valid token that shares the address.

`FailureBudget(limit, window_s)`: an address that failed `limit` times within the current
window of `window_s` seconds is *over budget* until the window ends. What that changes (the
core applies it, `ext_authz.core`):
- a request from it whose authentication fails is a 429 with `Retry-After` (instead of a 401),
  telling a retrying client to back off; a request without a usable Authorization header is
  refused so at once, before any token work;
- a token is still verified, and one that verifies is allowed: cheap work (shape checks, an
  HMAC digest: microseconds) always runs, so every valid HS256/384/512 token and every cached
  token passes whatever the flood beside it;
- asymmetric signatures (RS/PS/ES/EdDSA: tens to hundreds of microseconds each) run under a
  per-address allowance (`costly_per_s`): at most that many of them *that fail* run per second
  for an address over budget (one that succeeds gives its slot back). Once the allowance is
  spent, fresh asymmetric tokens from that address wait for the next second (429,
  `Retry-After: 1`), without a signature check. So a forged-signature flood from one address
  costs the server at most `costly_per_s` checks a second, and valid asymmetric tokens from
  its address are verified whenever the flood has not spent the second's allowance.

Only failures are counted: the budget is spent on work that failed, never on work that
succeeded. Windows are fixed and aligned to the clock: cheap (one dict lookup per check) and
strict enough, since the budget protects CPU, not a quota a client plans against. At most
`max_keys` addresses are tracked (least recently failed dropped first), so memory stays bounded
whatever the number of addresses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sidecar_shared import defaults
from sidecar_shared.bounded import BoundedMap


class Allowance:
    """The costly-verification gate of one check from an address over budget: calling it takes
    a slot of the address's allowance for this second (True) or says none is left (False)."""

    __slots__ = ("_address", "_budget", "taken")

    def __init__(self, budget: FailureBudget, address: str) -> None:
        self._budget = budget
        self._address = address
        self.taken = False

    def __call__(self) -> bool:
        self.taken = self._budget._take_costly(self._address)
        return self.taken

    def succeeded(self) -> None:
        """The verification this gate let run succeeded: its slot goes back."""
        if self.taken:
            self._budget._give_back(self._address)
            self.taken = False


class FailureBudget:
    def __init__(
        self,
        limit: int,
        window_s: int,
        clock: Callable[[], float],
        max_keys: int = 100_000,
        costly_per_s: int = defaults.FAILED_AUTH_COSTLY_PER_S,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._costly_per_s = costly_per_s
        # address -> (window index, failures in it)
        self._failures: BoundedMap[str, tuple[int, int]] = BoundedMap(max_keys)
        # address -> (second, costly verifications taken in it), for addresses over budget
        self._costly: BoundedMap[str, tuple[int, int]] = BoundedMap(max_keys)
        self._lock = threading.Lock()

    def blocked(self, address: str) -> int:
        """Seconds until `address` is within its budget again; 0 when it is now. Never raises."""
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

    def allowance(self, address: str) -> Allowance:
        """The gate for a costly (asymmetric) signature check of a token from `address`, an
        address over budget (`blocked`)."""
        return Allowance(self, address)

    def _take_costly(self, address: str) -> bool:
        second = int(self._clock())
        with self._lock:
            seen, taken = self._costly.get(address, (second, 0))
            if seen != second:
                taken = 0
            if taken >= self._costly_per_s:
                return False
            self._costly[address] = (second, taken + 1)
            return True

    def _give_back(self, address: str) -> None:
        with self._lock:
            entry = self._costly.get(address)
            if entry is not None and entry[1] > 0:
                self._costly[address] = (entry[0], entry[1] - 1)

    def __len__(self) -> int:
        return len(self._failures)
