"""Sub-bucketed sliding window: the pure math shared by every backend (no I/O, no clock reads).

Rule
----
The window ``W = limit.window_s`` is split into ``N = 10`` buckets of width ``w = W / N``.
Times are whole milliseconds (``t_ms = to_ms(t)``, rounded to the nearest ms so that
``t = ms / 1000`` maps back to ``ms`` exactly) and ``w_ms = W * 1000 // N`` (exact: ``W`` is a
whole number of seconds). The bucket of time ``t`` is ``b(t) = t_ms // w_ms``.

A request at time ``t`` is allowed iff the sum of the counts in buckets with index in
``[b(t) - N, b(t)]`` (N + 1 buckets: all of ``(t - W, t]`` plus up to one bucket more) is
``< capacity`` (``limit + burst``); if allowed, bucket ``b(t)`` is incremented. A denied
request is never counted.

Guarantee
---------
For every key, as long as the times passed for that key never decrease, in ANY half-open
interval ``(t - W, t]`` at most ``capacity = limit + burst`` requests are allowed, including
intervals that straddle window or bucket edges: there is never a doubling at window edges.

Proof. Let ``s`` be the last request allowed in ``(t - W, t]``. Every request ``u`` allowed in
that interval has ``s - W < u <= s``, so ``s_ms - W_ms <= u_ms <= s_ms`` (rounding to ms is
monotone and commutes with whole-ms shifts) and, since ``W_ms = N * w_ms`` exactly,
``b(s) - N <= b(u) <= b(s)``. Every such ``u`` other than ``s`` was decided before ``s``, was
counted in bucket ``b(u)``, and that bucket is inside the range ``[b(s) - N, b(s)]`` summed
when ``s`` was decided (only buckets below that range are ever dropped). ``s`` was allowed, so
that sum, and hence the number of those ``u``, was at most ``capacity - 1``; with ``s``
itself at most ``capacity``.

Slack. A request at ``t`` is denied only if ``capacity`` requests were allowed in buckets
``[b(t) - N, b(t)]``, all of which lie in ``(t - W - w, t]`` (because
``b(t) * w_ms > t_ms - w_ms``): a client pacing at exactly ``capacity`` per ``W`` waits at
most one bucket width (``W / 10``) extra.

Clocks: across processes sharing a store (Redis), the guarantee holds up to the clock skew
between them, so replicas should run NTP-synced clocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping

from ext_authz.ratelimit.base import Limit, LimitDecision

N_BUCKETS = 10
"""Buckets per window."""


def to_ms(t: float) -> int:
    """Seconds to whole milliseconds, rounded to nearest (monotone; exact for ``ms / 1000``)."""
    return math.floor(t * 1000 + 0.5)


def bucket_width_ms(window_s: int) -> int:
    """Width of one bucket in ms: ``window_s * 1000 // N_BUCKETS``."""
    return window_s * 1000 // N_BUCKETS


def bucket_of(now_ms: int, window_s: int) -> int:
    """Index of the bucket containing ``now_ms``."""
    return now_ms // bucket_width_ms(window_s)


def oldest_counted(now_ms: int, window_s: int) -> int:
    """Lowest bucket index still counted at ``now_ms``: ``b(now) - N``."""
    return bucket_of(now_ms, window_s) - N_BUCKETS


def expiry_ms(window_s: int) -> int:
    """How long a bucket written now can matter: ``W + w`` in ms (a store's TTL floor)."""
    return window_s * 1000 + bucket_width_ms(window_s)


def prune(buckets: MutableMapping[int, int], now_ms: int, window_s: int) -> None:
    """Delete buckets that can never be counted again (index below ``b(now) - N``)."""
    lo = oldest_counted(now_ms, window_s)
    for idx in [i for i in buckets if i < lo]:
        del buckets[idx]


def _ceil_s(ms: int) -> int:
    return max(0, -(-ms // 1000))


def decide(
    buckets: Mapping[int, int], now_ms: int, limit: Limit
) -> tuple[LimitDecision, int | None]:
    """Decide one request at ``now_ms`` given the key's buckets *before* it.

    Returns the decision and the bucket index to increment (``None`` when denied). Buckets
    outside ``[b(now) - N, b(now)]`` are ignored, so callers need not prune first.
    """
    w = limit.window_s * 1000 // N_BUCKETS  # bucket_width_ms, inlined: this runs per check
    b = now_ms // w
    lo = b - N_BUCKETS
    used = 0
    for idx, count in buckets.items():
        if lo <= idx <= b and count > 0:
            used += count
    capacity = limit.capacity
    if used < capacity:
        # reset: until bucket b is no longer counted (as leaves_in_ms(b) below)
        reset_ms = (b + N_BUCKETS + 1) * w - now_ms
        return LimitDecision(True, limit.limit, capacity - used - 1, _ceil_s(reset_ms), 0), b

    def leaves_in_ms(idx: int) -> int:
        """ms from now until bucket ``idx`` is no longer counted (``b(t) > idx + N``)."""
        return (idx + N_BUCKETS + 1) * w - now_ms

    counted = sorted((idx, count) for idx, count in buckets.items() if lo <= idx <= b and count > 0)
    # Denied: wait until the oldest buckets holding at least `used - capacity + 1` requests
    # have left the counted range.
    must_drain = used - capacity + 1
    drained = 0
    retry_ms = leaves_in_ms(b)
    for idx, count in counted:
        drained += count
        if drained >= must_drain:
            retry_ms = leaves_in_ms(idx)
            break
    denied = LimitDecision(
        allowed=False,
        limit=limit.limit,
        remaining=0,
        reset_s=_ceil_s(leaves_in_ms(counted[-1][0])),
        retry_after_s=max(1, _ceil_s(retry_ms)),
    )
    return denied, None
