"""In-process rate limiting: the window rule of :mod:`ext_authz.ratelimit.window` in a dict.

Memory is bounded two ways: an LRU capped at ``max_keys`` entries (the least recently used key
is evicted, which forgets its usage), and idle keys (no bucket left in the counted range) are
dropped by a sweep on every call of up to ``sweep_per_call`` least recently used entries, which
stops at the first that still counts (bounded work per call; in the steady state one look). A
key's buckets that can no longer count are pruned when it opens a new one.
"""

from __future__ import annotations

import itertools
import threading

from ext_authz.ratelimit.base import DEFAULT_CLOCK, Clock, Limit, LimitDecision
from ext_authz.ratelimit.window import decide, oldest_counted, prune, to_ms
from sidecar_shared.bounded import BoundedMap

_Key = tuple[str, int]


class MemoryLimiter:
    """Thread-safe in-memory :class:`~ext_authz.ratelimit.base.Limiter`.

    State is keyed by ``(key, limit.window_s)``; per key only the bucket counts are stored.
    Never raises :class:`~ext_authz.ratelimit.base.LimiterUnavailable`.
    """

    def __init__(
        self, clock: Clock = DEFAULT_CLOCK, max_keys: int = 1_000_000, sweep_per_call: int = 8
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._clock = clock
        self._sweep_per_call = sweep_per_call
        self._lock = threading.Lock()
        self._state: BoundedMap[_Key, dict[int, int]] = BoundedMap(max_keys)

    def __len__(self) -> int:
        """Number of keys currently holding state."""
        with self._lock:
            return len(self._state)

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        """Count one request for ``key`` if allowed (see :func:`window.decide`)."""
        state_key = (key, limit.window_s)
        with self._lock:
            # The clock is read under the lock so that, per key, decisions are made in time
            # order (the window guarantee assumes non-decreasing times).
            now_ms = to_ms(self._clock())
            buckets = self._state.touch(state_key)
            decision, increment = decide(buckets or {}, now_ms, limit)
            if increment is not None:
                if buckets is None:  # a key's first count: it holds state from now on
                    buckets = self._state[state_key] = {increment: 1}
                elif increment in buckets:
                    buckets[increment] += 1
                else:  # a new bucket: drop those that can never count again
                    prune(buckets, now_ms, limit.window_s)
                    buckets[increment] = 1
            self._sweep(now_ms)
        return decision

    def _sweep(self, now_ms: int) -> None:
        """Drop idle keys among the least recently used few. Caller holds the lock."""
        idle = []
        for k, buckets in itertools.islice(self._state.items(), self._sweep_per_call):
            # Counts here are never below 1, so a key is idle when its newest bucket is.
            if buckets and max(buckets) >= oldest_counted(now_ms, k[1]):
                break
            idle.append(k)
        for k in idle:
            del self._state[k]
