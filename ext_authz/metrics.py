"""ext_authz's Prometheus metrics, registered on a registry the caller owns.

What changes per check (`CheckCounters`: decisions, their latency, rate-limit results) is
counted in plain ints by `observers.MetricsObserver` and turned into Prometheus samples only
when Prometheus scrapes, as what ext_authz keeps counting anyway (token-cache lookups) is.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


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


# (decision, status, reason, service) of `ext_authz_checks_total`
CheckLabels = tuple[str, str, str, str]
# (service, result) of `ext_authz_rate_limit_decisions_total`
LimitLabels = tuple[str, str]


class CheckCounters(Collector):
    """`ext_authz_checks_total`, `ext_authz_check_duration_seconds` and
    `ext_authz_rate_limit_decisions_total`, counted in plain ints under one lock (a check's
    counts cost less than one `Counter.inc`) and exported when Prometheus scrapes, with the
    same samples a `Counter` and a `Histogram` would give in our servers, which turn
    prometheus_client's `_created` series off (`sidecar_shared.registry`): none here either."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._checks: dict[CheckLabels, list[int]] = {}  # labels -> [count]
        self._limits: dict[LimitLabels, list[int]] = {}
        self._bounds = (*CHECK_SECONDS_BUCKETS, float("inf"))
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0

    def count(self, check: CheckLabels, seconds: float, limit: LimitLabels | None) -> None:
        """One check with these labels that took `seconds`; counted against a limit with
        `limit`'s labels, when not None."""
        with self._lock:
            found = self._checks.get(check)
            if found is None:
                self._checks[check] = [1]
            else:
                found[0] += 1
            self._buckets[bisect.bisect_left(self._bounds, seconds)] += 1
            self._sum += seconds
            if limit is not None:
                counted = self._limits.get(limit)
                if counted is None:
                    self._limits[limit] = [1]
                else:
                    counted[0] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            checks = {k: v[0] for k, v in self._checks.items()}
            limits = {k: v[0] for k, v in self._limits.items()}
            buckets, total = list(self._buckets), self._sum
        family = CounterMetricFamily(
            "ext_authz_checks",
            "Authorization decisions by decision (allow, deny), HTTP status, reason and service",
            labels=["decision", "status", "reason", "service"],
        )
        for labels, n in checks.items():
            family.add_metric(labels, float(n))
        yield family
        seconds = HistogramMetricFamily(
            "ext_authz_check_duration_seconds",
            "Time ext_authz spent deciding one check (token, roles, rate limit, response)",
        )
        cumulative, acc = [], 0.0
        for le, n in zip(self._le, buckets, strict=True):
            acc += n
            cumulative.append((le, acc))
        seconds.add_metric([], cumulative, total)
        yield seconds
        limited = CounterMetricFamily(
            "ext_authz_rate_limit_decisions",
            "Requests counted against a route's rate limit, by service and result",
            labels=["service", "result"],
        )
        for limit_labels, n in limits.items():
            limited.add_metric(limit_labels, float(n))
        yield limited


class AuthzMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = CheckCounters()
        registry.register(self.decisions)
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
