"""Traffic fields of the catalog become the Envoy settings they promise (the e2e tests in
tests/e2e/test_retries.py and its siblings show Envoy doing it)."""

from __future__ import annotations

import pytest

from tests.support.translation import cluster, routes, service, snapshot_of
from xds_server.resources.routes import IDEMPOTENT_METHODS, retry_on_before_upstream


def test_retries_on_responses_apply_to_idempotent_methods_only() -> None:
    policy = {"max_retries": 2, "retry_on": ["5xx", "retriable-4xx"], "per_try_timeout_ms": 300}
    idempotent, rest = routes(snapshot_of(service("orders", retry_policy=policy)))
    (method,) = idempotent.match.headers
    assert method.name == ":method"
    assert method.string_match.safe_regex.regex.split("|") == list(IDEMPOTENT_METHODS)
    assert idempotent.route.retry_policy.retry_on == "5xx,retriable-4xx"
    assert not rest.match.headers
    assert rest.name == "orders/non-idempotent"
    assert rest.route.retry_policy.retry_on == "connect-failure,refused-stream,reset-before-request"
    assert rest.route.retry_policy.num_retries.value == 2
    assert rest.route.retry_policy.per_try_timeout.ToMilliseconds() == 300


@pytest.mark.parametrize(
    ("retry_on", "safe"),
    [
        (["5xx"], ["connect-failure", "refused-stream", "reset-before-request"]),
        (["gateway-error"], ["connect-failure", "refused-stream", "reset-before-request"]),
        (["reset"], ["connect-failure", "refused-stream", "reset-before-request"]),
        (["retriable-4xx", "connect-failure"], ["connect-failure"]),
        (["unavailable", "envoy-ratelimited"], []),
    ],
)
def test_only_conditions_before_the_upstream_saw_the_request_are_safe(
    retry_on: list[str], safe: list[str]
) -> None:
    assert retry_on_before_upstream(retry_on) == safe


def test_no_safe_condition_means_no_retries_for_other_methods() -> None:
    policy = {"retry_on": ["retriable-4xx"]}
    _, rest = routes(snapshot_of(service("orders", retry_policy=policy)))
    assert not rest.route.HasField("retry_policy")


@pytest.mark.parametrize(
    "policy",
    [
        {"retry_on": ["5xx"], "retry_non_idempotent": True},
        {"retry_on": ["connect-failure", "reset-before-request"]},
        {"retry_on": ["5xx"], "max_retries": 0},
    ],
    ids=["opted-in", "only-safe-conditions", "no-retries"],
)
def test_one_route_when_retries_do_not_depend_on_the_method(policy: dict[str, object]) -> None:
    (only,) = routes(snapshot_of(service("orders", retry_policy=policy)))
    assert not only.match.headers


def test_no_panic_mode_and_health_changes_apply_at_once() -> None:
    c = cluster(snapshot_of(service("orders")), "orders")
    assert c.common_lb_config.HasField("healthy_panic_threshold")
    assert c.common_lb_config.healthy_panic_threshold.value == 0
    assert c.common_lb_config.HasField("update_merge_window")
    assert c.common_lb_config.update_merge_window.ToMilliseconds() == 0


def test_health_checks_count_every_failed_answer_towards_the_threshold() -> None:
    c = cluster(snapshot_of(service("orders", healthcheck_endpoint="/healthz")), "orders")
    (check,) = c.health_checks
    http = check.http_health_check
    assert [(r.start, r.end) for r in http.expected_statuses] == [(200, 400)]
    assert [(r.start, r.end) for r in http.retriable_statuses] == [(100, 200), (400, 600)]
