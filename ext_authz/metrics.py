"""ext_authz's Prometheus metrics, registered on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AuthzMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks = Counter(
            "ext_authz_checks_total",
            "Authorization decisions by HTTP status and reason",
            ["status", "reason"],
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
        self.rate_limit_backend_available.set(1)


class KeyMetrics:
    """The JWKS source's health: fetches, failures, refetches for unknown kids, age."""

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
        self.jwks_age = Gauge(
            "ext_authz_jwks_age_seconds",
            "Seconds since the JWKS in use was last fetched successfully",
            registry=registry,
        )
