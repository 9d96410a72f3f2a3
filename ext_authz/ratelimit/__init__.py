"""Per-key request limits: a conservative sliding window, in memory or shared through Redis.

- :class:`MemoryLimiter`: one process, bounded memory.
- ``ext_authz.ratelimit.redis_backend.RedisLimiter``: shared between replicas, one round trip
  per check. Import it from its module: the Redis client is loaded only when it is chosen.
- :class:`GuardedLimiter` (and :class:`GuardedAsyncLimiter` for an event loop): fail-open /
  fail-closed policy when a backend is unavailable.
- ``ext_authz.ratelimit.redis_backend.AsyncRedisLimiter``: the same store through redis-py's
  asyncio client (one EVALSHA per check, a loop turn's checks pipelined), for the HTTP
  transport's event loop; :class:`ThreadedAsyncLimiter` runs a blocking limiter off the loop.

The window rule and its guarantee are documented in :mod:`ext_authz.ratelimit.window`.
"""

from ext_authz.ratelimit.base import (
    AsyncLimiter,
    BackendConfigError,
    Clock,
    Limit,
    LimitDecision,
    Limiter,
    LimiterUnavailable,
    ThreadedAsyncLimiter,
)
from ext_authz.ratelimit.guard import GuardedAsyncLimiter, GuardedLimiter
from ext_authz.ratelimit.memory import MemoryLimiter
from ext_authz.ratelimit.window import N_BUCKETS

__all__ = [
    "N_BUCKETS",
    "AsyncLimiter",
    "BackendConfigError",
    "Clock",
    "GuardedAsyncLimiter",
    "GuardedLimiter",
    "Limit",
    "LimitDecision",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "ThreadedAsyncLimiter",
]
