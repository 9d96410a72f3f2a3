"""The catalog at its edges: every integer field, its bounds, and a catalog with each at its
lowest or highest value; and the paths that look like a longer service's base path without being
it, which a strict shorter service must refuse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xds_server.catalog import json_schema

# Spellings of `/orders/admin` (a service under the strict `/orders`) that are not the path
# `/orders/admin` itself: a path parameter, a trailing dot, encoded or double-encoded characters,
# an overlong UTF-8 dot, other letter cases, with and without a deeper path.
LOOKALIKES = (
    "/orders/admin;x",
    "/orders/admin.",
    "/orders/admin%2e",
    "/orders/admin%2E",
    "/orders/admin%20",
    "/orders/ADMIN",
    "/orders/Admin/users",
    "/orders/admin%252e",
    "/orders/admin%c0%ae",
    "/orders/admin%3f",
    "/orders/admin%09",
    "/orders/admin;jsessionid=1/users",
    "/orders/admin./users",
)


def integer_properties() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(definition, property, integer schema) for every integer anywhere in the catalog."""
    for definition, body in json_schema()["$defs"].items():
        for prop, schema in body.get("properties", {}).items():
            for alternative in schema.get("anyOf", [schema]):
                # (an enum of integers, such as an access test's expected status, is bounded)
                if alternative.get("type") == "integer" and "enum" not in alternative:
                    yield definition, prop, alternative


def bounds(schema: dict[str, Any]) -> tuple[int, int]:
    low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
    high = schema.get("maximum", schema.get("exclusiveMaximum", 1) - 1)
    return low, high


def extreme_catalog(pick: int) -> dict[str, Any]:
    """One service with every integer at its lowest (pick 0) or highest (pick 1) value."""
    values = {(d, p): bounds(s)[pick] for d, p, s in integer_properties()}

    def of(definition: str, *skip: str) -> dict[str, int]:
        return {p: v for (d, p), v in values.items() if d == definition and p not in skip}

    service: dict[str, Any] = {
        "service_name": "edge",
        "base_path": "/edge",
        # An endpoint with the extreme weight beside one with the default (all 0 is an error).
        "internal_url": [
            {"url": "http://127.0.0.1:8080", **of("Endpoint")},
            "http://127.0.0.1:8081",
        ],
        "healthcheck_endpoint": "/healthz",
        **of("Service"),
        "retry_policy": of("RetryPolicy"),
        "rate_limit": of("RateLimit", "requests_per_minute", "requests_per_hour"),
        "health_check": of("HealthCheck"),
        "outlier_detection": of("OutlierDetection"),
        "circuit_breaker": of("CircuitBreaker"),
        # Without retries: its timeout at the lowest stays above no per-try timeout.
        "endpoints": [
            {"name": "ep", "path": "/edge/ep", **of("ServiceEndpoint"), "retry_policy": None}
        ],
    }
    retry = service["retry_policy"]
    # Cross-field rules: the per-try timeout may not exceed the total, nor the check's timeout
    # its interval; the back-off maximum may not be below its base.
    retry["per_try_timeout_ms"] = min(retry["per_try_timeout_ms"], service["timeout_ms"])
    hc = service["health_check"]
    hc["timeout_ms"] = min(hc["timeout_ms"], hc["interval_ms"])
    retry["backoff_max_ms"] = max(retry["backoff_max_ms"], retry["backoff_base_ms"])
    return {"services": [service], "roles": {"r": ["edge:read"]}}
