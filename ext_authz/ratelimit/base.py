"""The rate-limit contract shared by every backend.

A :class:`Limiter` counts requests per key against a :class:`Limit` and answers with a
:class:`Decision` carrying everything needed for ``RateLimit-*`` / ``Retry-After`` headers.
Backends raise :class:`LimiterUnavailable` (and nothing else) when they cannot decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]
"""Seconds, monotonic or wall; injected everywhere so tests control time."""

DEFAULT_CLOCK: Clock = time.time


@dataclass(frozen=True)
class Limit:
    """``limit`` requests per ``window_s`` seconds, tolerating ``burst`` extra ones.

    ``limit`` is what headers advertise; ``capacity`` = ``limit + burst`` is what is enforced.
    """

    limit: int
    window_s: int
    burst: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.window_s < 1:
            raise ValueError(f"window_s must be >= 1, got {self.window_s}")
        if self.burst < 0:
            raise ValueError(f"burst must be >= 0, got {self.burst}")

    @property
    def capacity(self) -> int:
        """Requests actually allowed per window: ``limit + burst``."""
        return self.limit + self.burst


@dataclass(frozen=True)
class Decision:
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


class LimiterUnavailable(Exception):
    """The backend could not decide (e.g. Redis unreachable).

    The only exception a backend raises.
    """


class Limiter(Protocol):
    """Anything that can count a request for a key against a limit."""

    def hit(self, key: str, limit: Limit) -> Decision:
        """Count one request for ``key`` if it is allowed; a denied request is never counted.

        Raises :class:`LimiterUnavailable` if the backend cannot decide.
        """
        ...
