"""The per-check counters, kept in plain ints and exported at scrape time, expose exactly what
prometheus_client's Counter and Histogram would for the same checks in our servers, whose
registry turns `_created` off (`sidecar_shared.registry`)."""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client.metrics as metrics_module
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ext_authz.metrics import CHECK_SECONDS_BUCKETS, AuthzMetrics, CheckCounters

checks = st.lists(
    st.tuples(
        st.sampled_from(
            [
                ("allow", "200", "ok", "orders"),
                ("allow", "200", "public", "status"),
                ("deny", "401", "expired", ""),
                ("deny", "429", "rate_limited", "orders"),
            ]
        ),
        st.one_of(st.sampled_from([0.0, *CHECK_SECONDS_BUCKETS, 2.0]), st.floats(0, 3)),
        st.sampled_from([None, ("orders", "allowed"), ("orders", "limited")]),
    ),
    max_size=40,
)


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


@pytest.fixture(autouse=True)
def no_created() -> Iterator[None]:
    """As our servers run prometheus_client (process-wide), restored afterwards."""
    was = metrics_module._use_created
    metrics_module.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        metrics_module._use_created = was


@settings(max_examples=100, deadline=None)
@given(checks)
def test_the_exposition_is_what_counter_and_histogram_would_give(
    seen: list[tuple[tuple[str, str, str, str], float, tuple[str, str] | None]],
) -> None:
    reference = CollectorRegistry()
    counted = Counter(
        "ext_authz_checks_total",
        "Authorization decisions by decision (allow, deny), HTTP status, reason and service",
        ["decision", "status", "reason", "service"],
        registry=reference,
    )
    seconds = Histogram(
        "ext_authz_check_duration_seconds",
        "Time ext_authz spent deciding one check (token, roles, rate limit, response)",
        buckets=CHECK_SECONDS_BUCKETS,
        registry=reference,
    )
    limited = Counter(
        "ext_authz_rate_limit_decisions_total",
        "Requests counted against a route's rate limit, by service and result",
        ["service", "result"],
        registry=reference,
    )
    registry = CollectorRegistry()
    counters = CheckCounters()
    registry.register(counters)
    for labels, took, limit in seen:
        counted.labels(*labels).inc()
        seconds.observe(took)
        if limit is not None:
            limited.labels(*limit).inc()
        counters.count(labels, took, limit)
    assert exposition(registry) == exposition(reference)


def test_the_families_keep_their_place_among_the_other_metrics() -> None:
    registry = CollectorRegistry()
    AuthzMetrics(registry)
    names = [family.name for family in registry.collect()]
    assert names[:4] == [
        "ext_authz_checks",
        "ext_authz_check_duration_seconds",
        "ext_authz_rate_limit_decisions",
        "ext_authz_rate_limit_backend_errors",
    ]
