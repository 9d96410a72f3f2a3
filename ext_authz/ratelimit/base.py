"""The rate-limit contract shared by every backend.

A :class:`Limiter` counts requests per key against a :class:`Limit` and answers with a
:class:`LimitDecision` carrying everything needed for ``RateLimit-*`` / ``Retry-After`` headers.
Backends raise :class:`LimiterUnavailable` (and nothing else) when they cannot decide.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sidecar_shared.contract import Limit

__all__ = [
    "DEFAULT_CLOCK",
    "AsyncLimiter",
    "BackendConfigError",
    "Clock",
    "Limit",
    "LimitDecision",
    "Limiter",
    "LimiterUnavailable",
    "ThreadedAsyncLimiter",
]

Clock = Callable[[], float]
"""Seconds, monotonic or wall; injected everywhere so tests control time."""

DEFAULT_CLOCK: Clock = time.time


@dataclass(slots=True)  # not frozen: cheaper to build, once per check; treat as immutable
class LimitDecision:
    """The outcome of one :meth:`Limiter.hit`.

    - ``limit``: :attr:`Limit.limit`, for headers.
    - ``remaining``: requests still allowed right now after this one (capacity-based), >= 0;
      0 when denied.
    - ``reset_s``: whole seconds (ceil, >= 0) until the counted usage drains to zero.
    - ``retry_after_s``: when denied, whole seconds (ceil, >= 1) until a request would be
      allowed (absent other traffic); 0 when allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int


class BackendConfigError(Exception):
    """The backend cannot be used as configured (a start-up error, with what to change)."""


class LimiterUnavailable(Exception):
    """The backend could not decide (e.g. Redis unreachable).

    The only exception a backend raises.
    """


class Limiter(Protocol):
    """Anything that can count a request for a key against a limit."""

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        """Count one request for ``key`` if it is allowed; a denied request is never counted.

        Raises :class:`LimiterUnavailable` if the backend cannot decide.
        """
        ...


class AsyncLimiter(Protocol):
    """A :class:`Limiter` for an event loop: the same rule and store, awaited instead of
    blocking (the Redis backend; the memory backend never waits and needs none)."""

    async def hit(self, key: str, limit: Limit) -> LimitDecision:
        """As :meth:`Limiter.hit`."""
        ...

    async def aclose(self) -> None:
        """Release connections (on the loop that used them)."""
        ...


class ThreadedAsyncLimiter:
    """An :class:`AsyncLimiter` over a blocking :class:`Limiter`: each call runs on a worker
    thread, so an event loop never waits on the backend's socket (Redis Cluster and Sentinel,
    whose asyncio clients we do not use)."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def hit(self, key: str, limit: Limit) -> LimitDecision:
        return await asyncio.to_thread(self._limiter.hit, key, limit)

    async def aclose(self) -> None:
        """Nothing of its own: the blocking limiter's owner closes it."""
