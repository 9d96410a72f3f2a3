"""In-process rate limiting: the window rule of :mod:`ext_authz.ratelimit.window` in a dict.

Memory is bounded: at most ``max_keys`` keys hold state. Idle keys (no bucket left in the
counted range) are dropped by a sweep of up to ``sweep_per_call`` least recently used entries,
which stops at the first that still counts and then rests until that key can have gone idle
(bounded work per call; in the steady state none). A key's buckets that can no longer count are
pruned when it opens a new one.

At the cap, a limit being enforced is never loosened: a key that still counts is never evicted
(evicting it would forget its usage and hand its user a fresh window). A new key first makes
room by dropping idle keys among the ``sweep_per_call`` least recently used; when none of them
is idle, the new key is not stored and its request is decided by the failure policy, as when a
backend cannot answer (``fail_open``: allowed and not counted; else denied, ``Retry-After: 1``).
Keys already held are counted as always. The first such refusal is logged once, and again only
after the limiter has fallen below 90 % of the cap; ``refused_at_cap`` counts them all.

Running counts: next to its buckets a key keeps the sum of the buckets counted at one bucket
index (``_Counts``), kept up to date as requests are counted and recomputed only when the
current bucket moves on (every ``W/10``). :meth:`MemoryLimiter.count` is the allow-only path
that uses it (the decision core's fast path): the same rule, so the same answers, without a
``LimitDecision``; it leaves denials and keys it does not hold to :meth:`MemoryLimiter.hit`,
and leaves the sweep to :meth:`MemoryLimiter.sweep`, called on a tick.
"""

from __future__ import annotations

import itertools
import logging
import threading

from ext_authz.ratelimit.base import DEFAULT_CLOCK, Clock, Limit, LimitDecision
from ext_authz.ratelimit.window import (
    N_BUCKETS,
    bucket_width_ms,
    decide,
    oldest_counted,
    prune,
    to_ms,
)
from sidecar_shared.bounded import BoundedMap

_Key = tuple[str, int]


class _Counts:
    """One key's buckets, and `used`: the sum of the buckets counted at bucket index `at`
    (``[at - N, at]``); `at` is -1 when `used` must be recomputed."""

    __slots__ = ("at", "buckets", "used")

    def __init__(self, buckets: dict[int, int]) -> None:
        self.buckets = buckets
        self.at = -1
        self.used = 0


class MemoryLimiter:
    """Thread-safe in-memory :class:`~ext_authz.ratelimit.base.Limiter`.

    State is keyed by ``(key, limit.window_s)``; per key only the bucket counts are stored.
    Never raises :class:`~ext_authz.ratelimit.base.LimiterUnavailable`: at the key cap, the
    failure policy (``fail_open``) answers for a key it has no room for.
    """

    def __init__(
        self,
        clock: Clock = DEFAULT_CLOCK,
        max_keys: int = 1_000_000,
        sweep_per_call: int = 8,
        *,
        fail_open: bool = True,
        log: logging.Logger | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._clock = clock
        self._max_keys = max_keys
        self._rearm_below = max_keys * 9 // 10
        self._sweep_per_call = sweep_per_call
        self._fail_open = fail_open
        self._log = log or logging.getLogger(__name__)
        self._lock = threading.Lock()
        # Never full past `max_keys`: room is made (or refused) before a key is stored.
        self._state: BoundedMap[_Key, _Counts] = BoundedMap(max_keys)
        self._full_logged = False
        self._quiet_until_ms = 0  # no sweep before: the oldest key seen counts until then
        self.refused_at_cap = 0  # new keys decided by the failure policy (read under no lock)

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
            counts = self._state.touch(state_key)
            if counts is None and not self._room(now_ms):
                self.refused_at_cap += 1
                first = not self._full_logged
                self._full_logged = True
                decision = None
            else:
                decision, increment = decide(counts.buckets if counts else {}, now_ms, limit)
                if increment is not None:
                    if counts is None:  # a key's first count: it holds state from now on
                        self._state[state_key] = _Counts({increment: 1})
                    else:
                        buckets = counts.buckets
                        if increment in buckets:
                            buckets[increment] += 1
                        else:  # a new bucket: drop those that can never count again
                            prune(buckets, now_ms, limit.window_s)
                            buckets[increment] = 1
                        if counts.at == increment:
                            counts.used += 1
                        else:
                            counts.at = -1
                self._sweep(now_ms)
        if decision is None:
            return self._at_cap(limit, first)
        return decision

    def count(self, key: str, limit: Limit) -> tuple[int, int] | None:
        """Count one request for a key this limiter holds, when the rule allows it: its
        ``(remaining, reset_s)`` as :meth:`hit` would answer. None, having counted nothing,
        when the key holds no state or the request would be denied: ask :meth:`hit`."""
        w = limit.window_s * 1000 // N_BUCKETS
        state_key = (key, limit.window_s)
        with self._lock:
            counts = self._state.get(state_key)
            if counts is None:
                return None
            self._state.move_to_end(state_key)  # as `touch`, without its call
            now_ms = to_ms(self._clock())
            b = now_ms // w
            buckets = counts.buckets
            if counts.at != b:  # the current bucket moved on: sum the counted range again
                lo = b - N_BUCKETS
                counts.used = sum(c for i, c in buckets.items() if lo <= i <= b)
                counts.at = b
            used = counts.used
            capacity = limit.capacity
            if used >= capacity:
                return None
            if b in buckets:
                buckets[b] += 1
            else:
                prune(buckets, now_ms, limit.window_s)
                buckets[b] = 1
            counts.used = used + 1
        return capacity - used - 1, max(0, -(-((b + N_BUCKETS + 1) * w - now_ms) // 1000))

    def sweep(self) -> None:
        """Drop idle keys now (as a check does), for callers of :meth:`count` on a tick."""
        with self._lock:
            self._sweep(to_ms(self._clock()))

    def _room(self, now_ms: int) -> bool:
        """Whether a new key may be stored: below the cap, or once idle keys among the least
        recently used few are dropped. Caller holds the lock."""
        state = self._state
        if len(state) < self._max_keys:
            if self._full_logged and len(state) < self._rearm_below:
                self._full_logged = False
            return True
        idle = [
            k
            for k, counts in itertools.islice(state.items(), self._sweep_per_call)
            if not counts.buckets or max(counts.buckets) < oldest_counted(now_ms, k[1])
        ]
        for k in idle:
            del state[k]
        return bool(idle)

    def _at_cap(self, limit: Limit, first: bool) -> LimitDecision:
        """The failure policy's answer for a key the limiter has no room for."""
        if first:
            policy = "open" if self._fail_open else "closed"
            self._log.warning(
                "in-memory rate limiter full: every key still counts; new keys fail %s",
                policy,
                extra={"fields": {"event": "ratelimit_keys_full", "max_keys": self._max_keys}},
            )
        if self._fail_open:
            return LimitDecision(
                allowed=True, limit=limit.limit, remaining=limit.limit, reset_s=0, retry_after_s=0
            )
        return LimitDecision(
            allowed=False, limit=limit.limit, remaining=0, reset_s=1, retry_after_s=1
        )

    def _sweep(self, now_ms: int) -> None:
        """Drop idle keys among the least recently used few, up to the first that still
        counts; then look again only once that key can have gone idle. Caller holds the
        lock."""
        if now_ms < self._quiet_until_ms:
            return
        idle = []
        for k, counts in itertools.islice(self._state.items(), self._sweep_per_call):
            # Counts here are never below 1, so a key is idle when its newest bucket is.
            buckets = counts.buckets
            if buckets:
                newest = max(buckets)
                if newest >= oldest_counted(now_ms, k[1]):
                    # Counted until bucket `newest` leaves the window (`window.decide`).
                    self._quiet_until_ms = (newest + N_BUCKETS + 1) * bucket_width_ms(k[1])
                    break
            idle.append(k)
        for k in idle:
            del self._state[k]
