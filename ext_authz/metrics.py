"""ext_authz's Prometheus metrics, registered on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


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
