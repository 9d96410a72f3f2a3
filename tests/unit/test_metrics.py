"""ext_authz's metrics say what an operator asks: decisions per service, how long checks take,
what rate limits did, whether tokens come from the cache, whether Redis answers."""

from __future__ import annotations

import logging

import jwt
import pytest
from prometheus_client import CollectorRegistry

from ext_authz.core import Authorizer
from ext_authz.decision import CheckInput
from ext_authz.metrics import AuthzMetrics, TokenCacheStats
from ext_authz.ratelimit import GuardedLimiter, LimiterUnavailable
from ext_authz.ratelimit.base import LimitDecision
from ext_authz.tokens import TokenVerifier, VerifierSettings
from sidecar_shared.contract import POLICY_KEY, Limit, RoutePolicy
from tests.support.authorizers import key_source, make_authorizer
from tests.support.policies import encode

SECRET = b"metrics-test-secret-that-is-long-enough-0123456789"
NOW = 1_800_000_000.0
LIMITED = RoutePolicy(service="orders", rbac_required=False, rate_limit=Limit(2, 60))


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(NOW) + 60}, SECRET, "HS256")


def check(authorizer: Authorizer, sub: str) -> int:
    headers = {"authorization": f"Bearer {token(sub)}"}
    return authorizer.check(
        CheckInput("GET", "/o/1", headers, {POLICY_KEY: encode(LIMITED)})
    ).status


def test_rate_limit_results_and_cache_lookups_are_counted() -> None:
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET), lambda: NOW)
    wired = make_authorizer(verifier, lambda: NOW)
    wired.registry.register(TokenCacheStats(verifier.cache))
    assert [check(wired.authorizer, "ann") for _ in range(3)] == [200, 200, 429]

    def sample(name: str, **labels: str) -> float | None:
        return wired.registry.get_sample_value(name, labels)

    assert sample("ext_authz_rate_limit_decisions_total", service="orders", result="allowed") == 2
    assert sample("ext_authz_rate_limit_decisions_total", service="orders", result="limited") == 1
    # The first check verified the token; the next two found it in the cache.
    assert sample("ext_authz_token_cache_lookups_total", result="miss") == 1
    assert sample("ext_authz_token_cache_lookups_total", result="hit") == 2
    limited = {"decision": "deny", "status": "429", "reason": "rate_limited", "service": "orders"}
    assert sample("ext_authz_checks_total", **limited) == 1


class FlakyBackend:
    def __init__(self) -> None:
        self.down = False

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        if self.down:
            raise LimiterUnavailable("connection refused")
        return LimitDecision(True, limit.limit, limit.limit - 1, 1, 0)


@pytest.mark.parametrize("fail_open", [True, False])
def test_the_backend_gauge_follows_outages(fail_open: bool) -> None:
    registry = CollectorRegistry()
    metrics = AuthzMetrics(registry)
    backend = FlakyBackend()
    limiter = GuardedLimiter(backend, fail_open=fail_open, log=logging.getLogger("test"))
    metrics.rate_limit_backend_available.set_function(lambda: 1.0 if limiter.available else 0.0)

    def available() -> float | None:
        return registry.get_sample_value("ext_authz_rate_limit_backend_available")

    limiter.hit("k", Limit(5, 1))
    assert available() == 1
    backend.down = True
    limiter.hit("k", Limit(5, 1))
    assert available() == 0
    backend.down = False
    limiter.hit("k", Limit(5, 1))
    assert available() == 1
