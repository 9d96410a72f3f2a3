"""Failure policy around a backend: what to answer when the limiter cannot decide."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ext_authz.ratelimit.base import (
    AsyncLimiter,
    Limit,
    LimitDecision,
    Limiter,
    LimiterUnavailable,
)
from sidecar_shared.outage import Outage


def _noop() -> None:
    return None


class GuardedLimiter:
    """A :class:`Limiter` that never raises :class:`LimiterUnavailable`.

    When ``backend`` raises it, answers allowed (``fail_open``: ``remaining = limit.limit``,
    ``reset_s = retry_after_s = 0``) or denied (``remaining = 0``,
    ``reset_s = retry_after_s = 1``). ``on_error()`` is called on every failure;
    ``on_outage()`` and one warning on the first failure of an outage (at start or after a
    success); ``on_recovery()`` and one "recovered" warning on the first success after an
    outage. Other exceptions (bugs) propagate.
    """

    def __init__(
        self,
        backend: Limiter,
        *,
        fail_open: bool,
        log: logging.Logger,
        on_outage: Callable[[], None] = _noop,
        on_error: Callable[[], None] = _noop,
        on_recovery: Callable[[], None] = _noop,
    ) -> None:
        self._backend = backend
        self._fail_open = fail_open
        self._log = log
        self._on_outage = on_outage
        self._on_error = on_error
        self._on_recovery = on_recovery
        self._outage = Outage()

    @property
    def backend(self) -> Limiter:
        """The limiter this one guards."""
        return self._backend

    @property
    def available(self) -> bool:
        """False from the backend's first failure until its next success."""
        return not self._outage.ongoing

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        """The backend's decision, or the failure policy's when it is unavailable."""
        try:
            decision = self._backend.hit(key, limit)
        except LimiterUnavailable as e:
            return self.fallback(e, limit)
        if self._outage.ongoing:
            self.succeeded()
        return decision

    def report_unavailable(self, error: str) -> None:
        """The backend is known to be unavailable (a start-up check): an outage begins now."""
        self._failed(LimiterUnavailable(error))

    def fallback(self, error: LimiterUnavailable, limit: Limit) -> LimitDecision:
        """Note that the backend failed with `error` (counted; an outage begins, or goes on),
        and return the failure policy's decision for `limit`."""
        self._failed(error)
        if self._fail_open:
            return LimitDecision(
                allowed=True, limit=limit.limit, remaining=limit.limit, reset_s=0, retry_after_s=0
            )
        return LimitDecision(
            allowed=False, limit=limit.limit, remaining=0, reset_s=1, retry_after_s=1
        )

    def succeeded(self) -> None:
        """Note that the backend answered: the outage, if one is on, ends now."""
        if self._outage.ongoing and self._outage.succeeded() is not None:
            self._log.warning(
                "rate limiter recovered", extra={"fields": {"event": "ratelimit_recovered"}}
            )
            self._on_recovery()

    def _failed(self, error: LimiterUnavailable) -> None:
        self._on_error()
        if self._outage.failed():
            policy = "open" if self._fail_open else "closed"
            self._log.warning(
                "rate limiter unavailable, failing %s",
                policy,
                extra={
                    "fields": {
                        "event": "ratelimit_unavailable",
                        "fail": policy,
                        "error": str(error),
                    }
                },
            )
            self._on_outage()


class GuardedAsyncLimiter:
    """:class:`GuardedLimiter`'s policy around an :class:`AsyncLimiter`. Give it the
    synchronous guard of the same store, so that both paths share one outage state (one
    warning and one outage count per outage, whichever path saw it)."""

    def __init__(self, backend: AsyncLimiter, guard: GuardedLimiter) -> None:
        self._backend = backend
        self._guard = guard

    async def hit(self, key: str, limit: Limit) -> LimitDecision:
        try:
            decision = await self._backend.hit(key, limit)
        except LimiterUnavailable as e:
            return self._guard.fallback(e, limit)
        self._guard.succeeded()
        return decision

    async def aclose(self) -> None:
        await self._backend.aclose()
