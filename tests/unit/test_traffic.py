"""Traffic fields of the catalog become the Envoy settings they promise (the e2e tests in
tests/e2e/test_retries.py and its siblings show Envoy doing it)."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tests.support.translation import (
    assignment,
    catalog_of,
    cluster,
    routes,
    service,
    snapshot_of,
)
from xds_server import typeurls
from xds_server.catalog import CatalogError
from xds_server.resources.clusters import HTTP_OPTIONS
from xds_server.resources.common import CACHE_FILTER
from xds_server.resources.http_cache import HIDE_FILTER, RESTORE_FILTER, SIDE
from xds_server.resources.retries import (
    _LUA,
    IDEMPOTENT_METHODS,
    RETRY_FILTER,
    retry_on_before_upstream,
)
from xds_server.snapshot import Snapshot
from xds_server.translate import Options


def per_route_retries(route: route_components_pb2.Route) -> dict[str, str] | None:
    """What the retry filter adds for idempotent methods on this route (None: it is off)."""
    if RETRY_FILTER not in route.typed_per_filter_config:
        return None
    per_route = lua_pb2.LuaPerRoute()
    route.typed_per_filter_config[RETRY_FILTER].Unpack(per_route)
    return dict(per_route.filter_context)


def filter_names(snap: Snapshot, listener: str = "ingress_http") -> list[str]:
    manager = hcm_pb2.HttpConnectionManager()
    message = snap.resources[typeurls.LISTENER][listener].message
    assert isinstance(message, listener_pb2.Listener)
    message.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


def test_retries_on_answers_are_added_for_idempotent_methods_only() -> None:
    policy = {
        "max_retries": 2,
        "retry_on": ["5xx", "retriable-4xx", "unavailable"],
        "per_try_timeout_ms": 300,
    }
    (route,) = routes(snapshot_of(service("orders", retry_policy=policy)))
    # The route's own conditions hold for every method...
    retry = route.route.retry_policy
    assert retry.retry_on == "connect-failure,refused-stream,reset-before-request"
    assert retry.num_retries.value == 2
    assert retry.per_try_timeout.ToMilliseconds() == 300
    # ...and the filter adds the rest (by header kind) when the method is idempotent.
    assert per_route_retries(route) == {
        "retry_on": "5xx,retriable-4xx",
        "retry_grpc_on": "unavailable",
    }
    assert all(f"{m} = true" in _LUA for m in IDEMPOTENT_METHODS)


def test_the_retry_filter_runs_right_before_the_router_only_when_needed() -> None:
    assert RETRY_FILTER not in filter_names(snapshot_of(service("a", retry_policy=None)))
    snap = snapshot_of(service("a", retry_policy={"retry_on": ["5xx"]}, cacheable=True))
    for listener in ("ingress_http", SIDE):
        assert filter_names(snap, listener)[-2:] == [RETRY_FILTER, "envoy.filters.http.router"]


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


def test_no_safe_condition_leaves_other_methods_without_retries() -> None:
    (route,) = routes(snapshot_of(service("orders", retry_policy={"retry_on": ["retriable-4xx"]})))
    assert route.route.retry_policy.retry_on == ""
    assert per_route_retries(route) == {"retry_on": "retriable-4xx"}


@pytest.mark.parametrize(
    ("policy", "retry_on"),
    [
        ({"retry_on": ["5xx"], "retry_non_idempotent": True}, "5xx"),
        (
            {"retry_on": ["connect-failure", "reset-before-request"]},
            "connect-failure,reset-before-request",
        ),
    ],
    ids=["opted-in", "only-safe-conditions"],
)
def test_the_route_keeps_every_condition_when_retries_do_not_depend_on_the_method(
    policy: dict[str, object], retry_on: str
) -> None:
    (route,) = routes(snapshot_of(service("orders", retry_policy=policy)))
    assert route.route.retry_policy.retry_on == retry_on
    assert per_route_retries(route) is None


def test_no_retries_means_no_retry_policy() -> None:
    policy = {"retry_on": ["5xx"], "max_retries": 0}
    (route,) = routes(snapshot_of(service("orders", retry_policy=policy)))
    assert not route.route.HasField("retry_policy")
    assert per_route_retries(route) is None


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


def test_the_cache_fetches_through_an_internal_listener_only_when_a_service_is_cacheable() -> None:
    plain = snapshot_of(service("a"))
    assert SIDE not in plain.resources[typeurls.CLUSTER]
    assert SIDE not in plain.resources[typeurls.LISTENER]
    snap = snapshot_of(service("a", cacheable=True), service("b"))
    assert SIDE in snap.resources[typeurls.CLUSTER]
    side = snap.resources[typeurls.LISTENER][SIDE].message
    assert isinstance(side, listener_pb2.Listener)
    assert side.HasField("internal_listener")
    a, b = sorted(routes(snap), key=lambda r: r.name)
    assert set(a.typed_per_filter_config) >= {HIDE_FILTER, RESTORE_FILTER}
    assert CACHE_FILTER not in a.typed_per_filter_config
    assert HIDE_FILTER not in b.typed_per_filter_config
    assert CACHE_FILTER in b.typed_per_filter_config  # turned off


def test_a_bad_endpoint_is_named_by_its_place_in_the_list() -> None:
    urls = ["http://127.0.0.1:1", {"url": "ftp://h:1"}, {"url": "http://h:2", "weight": -1}]
    with pytest.raises(CatalogError) as caught:
        catalog_of(service("a", urls))
    assert [p.path for p in caught.value.problems] == [
        "services[0].internal_url[1].url",
        "services[0].internal_url[2].weight",
    ]


def test_weights_become_envoy_weights_and_weight_zero_leaves_the_endpoint_out() -> None:
    urls = [{"url": "http://10.0.0.1:80", "weight": 5}, "http://10.0.0.2:80"]
    urls.append({"url": "http://10.0.0.3:80", "weight": 0})
    (group,) = assignment(snapshot_of(service("a", urls)), "a").endpoints
    seen = [
        (e.endpoint.address.socket_address.address, e.load_balancing_weight.value or 1)
        for e in group.lb_endpoints
    ]
    assert seen == [("10.0.0.1", 5), ("10.0.0.2", 1)]


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        ((), {"eu": 0, "us": 0, "ap": 0}),
        (("eu",), {"eu": 0, "us": 1, "ap": 1}),
        (("us", "eu"), {"us": 0, "eu": 1, "ap": 2}),
        (("mars", "ap"), {"ap": 0, "eu": 1, "us": 1}),  # no gap where a region has no endpoint
    ],
)
def test_regions_become_localities_in_priority_order(
    preference: tuple[str, ...], expected: dict[str, int]
) -> None:
    urls = [
        {"url": f"http://10.0.0.{n}:80", "region": r} for n, r in enumerate(["eu", "us", "ap"], 1)
    ]
    snap = snapshot_of(service("a", urls), options=Options(regions=preference))
    got = {g.locality.region: g.priority for g in assignment(snap, "a").endpoints}
    assert got == expected


def test_http2_and_grpc_upstreams_speak_http2_and_grpc_is_health_checked_with_grpc() -> None:
    assert not cluster(snapshot_of(service("a")), "a").typed_extension_protocol_options
    for protocol in ("http2", "grpc"):
        c = cluster(snapshot_of(service("a", "https://h:443", protocol=protocol)), "a")
        options = http_protocol_options_pb2.HttpProtocolOptions()
        c.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
        assert options.explicit_http_config.HasField("http2_protocol_options")
        tls = tls_pb2.UpstreamTlsContext()
        c.transport_socket.typed_config.Unpack(tls)
        assert list(tls.common_tls_context.alpn_protocols) == ["h2"]
    grpc = service("a", protocol="grpc", healthcheck_endpoint="/pkg.Orders")
    (check,) = cluster(snapshot_of(grpc), "a").health_checks
    assert check.grpc_health_check.service_name == "pkg.Orders"


def test_grpc_routes_honour_the_clients_deadline_up_to_the_timeout() -> None:
    (route,) = routes(snapshot_of(service("a", protocol="grpc", timeout_ms=700)))
    assert route.route.max_stream_duration.grpc_timeout_header_max.ToMilliseconds() == 700
    (plain,) = routes(snapshot_of(service("a")))
    assert not plain.route.HasField("max_stream_duration")


def test_websocket_upgrades_only_where_the_catalog_allows_them() -> None:
    (route,) = routes(snapshot_of(service("a", websocket=True)))
    assert [u.upgrade_type for u in route.route.upgrade_configs] == ["websocket"]
    (plain,) = routes(snapshot_of(service("a")))
    assert not plain.route.upgrade_configs


def test_each_version_has_its_cluster_and_a_path_and_a_header_route_first() -> None:
    versions = {
        "v2": {"internal_url": "http://10.0.0.2:80"},
        "v3": {"internal_url": "http://10.0.0.3:80"},
    }
    snap = snapshot_of(service("orders", versions=versions, version_header="x-v"))
    assert {"orders", "orders@v2", "orders@v3"} <= set(snap.resources[typeurls.CLUSTER])
    matches = [
        (
            r.route.cluster,
            r.match.path_separated_prefix,
            [(h.name, h.string_match.exact) for h in r.match.headers],
        )
        for r in routes(snap)
    ]
    assert matches == [
        ("orders@v2", "/orders/v2", []),
        ("orders@v3", "/orders/v3", []),
        ("orders@v2", "/orders", [("x-v", "v2")]),
        ("orders@v3", "/orders", [("x-v", "v3")]),
        ("orders", "/orders", []),
    ]


def test_grpc_calls_without_a_deadline_are_bounded_by_the_timeout_too() -> None:
    (route,) = routes(snapshot_of(service("a", protocol="grpc", timeout_ms=700)))
    assert route.route.max_stream_duration.max_stream_duration.ToMilliseconds() == 700


def test_every_service_retries_once_on_another_endpoint_and_region_unless_it_says_null() -> None:
    (route,) = routes(snapshot_of(service("orders")))
    retry = route.route.retry_policy
    assert retry.num_retries.value == 1
    assert [p.name for p in retry.retry_host_predicate] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]
    assert retry.retry_priority.name == "envoy.retry_priorities.previous_priorities"
    (none,) = routes(snapshot_of(service("orders", retry_policy=None)))
    assert not none.route.HasField("retry_policy")


@pytest.mark.parametrize(
    ("policy", "per_try_ms"),
    [
        ({}, 7500),  # the defaults: one retry, 15 s
        ({"max_retries": 2, "retry_on": ["gateway-error"]}, 5000),
        ({"max_retries": 3, "retry_on": ["reset", "retriable-4xx"]}, 3750),
        ({"retry_on": ["connect-failure", "retriable-4xx"]}, None),  # a timeout is not retried
    ],
)
def test_each_retried_attempt_gets_its_share_of_the_timeout_on_idempotent_requests(
    policy: dict[str, object], per_try_ms: int | None
) -> None:
    (route,) = routes(snapshot_of(service("orders", retry_policy=policy)))
    added = per_route_retries(route) or {}
    expected = None if per_try_ms is None else str(per_try_ms)
    assert added.get("per_try_timeout_ms") == expected
    # A request that is not retried on a timeout (POST) keeps the whole timeout.
    assert not route.route.retry_policy.HasField("per_try_timeout")
    assert 'headers:replace("x-envoy-upstream-rq-per-try-timeout-ms", per_try)' in _LUA


def test_the_share_is_on_the_route_when_every_method_is_retried_and_a_given_one_wins() -> None:
    opted_in = {"retry_on": ["5xx"], "retry_non_idempotent": True}
    (route,) = routes(snapshot_of(service("orders", timeout_ms=900, retry_policy=opted_in)))
    assert route.route.retry_policy.per_try_timeout.ToMilliseconds() == 450
    given = {"retry_on": ["5xx"], "per_try_timeout_ms": 800}
    (route,) = routes(snapshot_of(service("orders", timeout_ms=900, retry_policy=given)))
    assert route.route.retry_policy.per_try_timeout.ToMilliseconds() == 800
    assert "per_try_timeout_ms" not in (per_route_retries(route) or {})


def test_ejections_stand_and_local_origin_failures_are_counted_apart() -> None:
    outlier = cluster(snapshot_of(service("orders")), "orders").outlier_detection
    assert outlier.HasField("successful_active_health_check_uneject_host")
    assert outlier.successful_active_health_check_uneject_host.value is False
    assert outlier.split_external_local_origin_errors
    assert outlier.consecutive_local_origin_failure.value == 3
    assert outlier.enforcing_consecutive_local_origin_failure.value == 100
    check = service("orders", healthcheck_endpoint="/healthz")
    (hc,) = cluster(snapshot_of(check), "orders").health_checks
    assert hc.healthy_threshold.value == 2


def test_the_overprovisioning_factor_is_the_catalogs_200_by_default() -> None:
    ip, dns = "http://10.0.0.1:80", "http://orders.internal:80"
    policy = assignment(snapshot_of(service("a", ip)), "a").policy
    assert policy.overprovisioning_factor.value == 200
    policy = assignment(snapshot_of(service("a", ip, overprovisioning_factor=140)), "a").policy
    assert policy.overprovisioning_factor.value == 140
    by_dns = cluster(snapshot_of(service("a", dns, overprovisioning_factor=300)), "a")
    assert by_dns.load_assignment.policy.overprovisioning_factor.value == 300
