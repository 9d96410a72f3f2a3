"""ext_authz's Prometheus metrics, registered on a registry the caller owns.

What changes per check is updated by `observers.MetricsObserver` (children looked up once per
label set, not per check); what ext_authz keeps counting anyway (token-cache lookups) is read
when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Lookups(Protocol):
    """What the token cache counts (`ext_authz.tokens.TokenCache`)."""

    hits: int
    misses: int


# Checks take tens of microseconds; the buckets resolve that and still show a slow Redis.
CHECK_SECONDS_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class AuthzMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks = Counter(
            "ext_authz_checks_total",
            "Authorization decisions by decision (allow, deny), HTTP status, reason and service",
            ["decision", "status", "reason", "service"],
            registry=registry,
        )
        self.check_seconds = Histogram(
            "ext_authz_check_duration_seconds",
            "Time ext_authz spent deciding one check (token, roles, rate limit, response)",
            buckets=CHECK_SECONDS_BUCKETS,
            registry=registry,
        )
        self.rate_limit_decisions = Counter(
            "ext_authz_rate_limit_decisions_total",
            "Requests counted against a route's rate limit, by service and result",
            ["service", "result"],
            registry=registry,
        )
        self.rate_limit_backend_errors = Counter(
            "ext_authz_rate_limit_backend_errors_total",
            "Rate-limit checks the backend could not answer",
            registry=registry,
        )
        self.rate_limit_outages = Counter(
            "ext_authz_rate_limit_backend_outages_total",
            "Times the rate-limit backend became unreachable",
            registry=registry,
        )
        self.rate_limit_backend_available = Gauge(
            "ext_authz_rate_limit_backend_available",
            "1 while the rate-limit backend answers, 0 during an outage",
            registry=registry,
        )


class TokenCacheStats(Collector):
    """`ext_authz_token_cache_lookups_total{result}`: hits and misses of the verified-token
    cache (a miss costs a signature verification)."""

    def __init__(self, cache: Lookups) -> None:
        self._cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ext_authz_token_cache_lookups",
            "Verified-token cache lookups by result",
            labels=["result"],
        )
        family.add_metric(["hit"], self._cache.hits)
        family.add_metric(["miss"], self._cache.misses)
        yield family


class KeyMetrics:
    """The JWKS source's health: fetches, failures, refetches for unknown kids, weak keys
    refused, age."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jwks_fetches = Counter(
            "ext_authz_jwks_fetches_total",
            "JWKS fetches tried (at start, on schedule, for an unknown kid)",
            registry=registry,
        )
        self.jwks_fetch_failures = Counter(
            "ext_authz_jwks_fetch_failures_total",
            "JWKS fetches that failed (the last good keys stay in use)",
            registry=registry,
        )
        self.jwks_unknown_kid_refetches = Counter(
            "ext_authz_jwks_unknown_kid_refetches_total",
            "JWKS refetches asked for by a token naming an unknown kid",
            registry=registry,
        )
        self.jwks_weak_keys = Counter(
            "ext_authz_jwks_weak_keys_total",
            "JWKS keys refused as weak (RSA under 2048 bits, a curve off the standard ones)",
            registry=registry,
        )
        self.jwks_age = Gauge(
            "ext_authz_jwks_age_seconds",
            "Seconds since the JWKS in use was last fetched successfully",
            registry=registry,
        )
