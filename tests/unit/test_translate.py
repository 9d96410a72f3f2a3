"""The translator turns catalog fields into the Envoy settings they promise."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from sidecar_shared.contract import AUTHZ_TRANSPORTS, decode
from tests.support import authz_config
from tests.support.catalogs import SAMPLE
from tests.support.translation import build_snapshot, translate
from xds_server import typeurls
from xds_server.catalog import load_catalog, parse_catalog
from xds_server.resources.common import ObservabilityOptions, TracingOptions
from xds_server.snapshot import Snapshot
from xds_server.translate import AuthzOptions, Options


def catalog(*services: dict[str, Any], roles: dict[str, list[str]] | None = None) -> Any:
    return parse_catalog({"services": list(services), "roles": roles or {}})


def svc(name: str, path: str, url: str | list[str] = "http://127.0.0.1:8080", **kw: Any) -> Any:
    return {"service_name": name, "base_path": path, "internal_url": url, **kw}


def routes_of(snap: Snapshot) -> list[route_components_pb2.Route]:
    (res,) = snap.resources[typeurls.ROUTE].values()
    assert isinstance(res.message, route_pb2.RouteConfiguration)
    return list(res.message.virtual_hosts[0].routes)


def route_named(snap: Snapshot, name: str) -> route_components_pb2.Route:
    return next(r for r in routes_of(snap) if r.name == name)


def cluster_named(snap: Snapshot, name: str) -> cluster_pb2.Cluster:
    msg = snap.resources[typeurls.CLUSTER][name].message
    assert isinstance(msg, cluster_pb2.Cluster)
    return msg


def test_route_carries_timeout_and_retry_policy_with_backoff() -> None:
    snap = build_snapshot(
        catalog(
            svc(
                "orders",
                "/orders",
                timeout_ms=2500,
                retry_policy={
                    "max_retries": 3,
                    "retry_on": ["connect-failure", "5xx"],
                    "per_try_timeout_ms": 800,
                    "backoff_base_ms": 40,
                    "backoff_max_ms": 1200,
                    "retry_non_idempotent": True,  # every condition on the route itself
                },
            )
        ),
        Options(),
    )
    action = route_named(snap, "orders").route
    assert action.cluster == "orders"
    assert action.timeout.ToMilliseconds() == 2500
    assert action.retry_policy.retry_on == "connect-failure,5xx"
    assert action.retry_policy.num_retries.value == 3
    assert action.retry_policy.per_try_timeout.ToMilliseconds() == 800
    assert action.retry_policy.retry_back_off.base_interval.ToMilliseconds() == 40
    assert action.retry_policy.retry_back_off.max_interval.ToMilliseconds() == 1200


def test_no_retry_policy_means_no_retries() -> None:
    snap = build_snapshot(catalog(svc("orders", "/orders", retry_policy=None)), Options())
    assert not route_named(snap, "orders").route.HasField("retry_policy")


def test_routes_are_longest_prefix_first_and_match_whole_segments() -> None:
    snap = build_snapshot(
        catalog(
            svc("a", "/api", strict_paths=False),
            svc("b", "/api/v2/", strict_paths=False),
            svc("root", "/", strict_paths=False),
            svc("c", "/api/v2/admin"),
        ),
        Options(),
    )
    routes = routes_of(snap)
    assert [r.name for r in routes] == ["c", "b", "a", "root"]
    assert routes[1].match.path_separated_prefix == "/api/v2"  # trailing slash dropped
    assert routes[-1].match.prefix == "/"


def test_route_order_does_not_depend_on_file_order() -> None:
    one = build_snapshot(catalog(svc("a", "/a"), svc("b", "/b")), Options())
    two = build_snapshot(catalog(svc("b", "/b"), svc("a", "/a")), Options())
    assert one.version == two.version


def test_cluster_has_health_check_breakers_and_outlier_detection() -> None:
    snap = build_snapshot(
        catalog(
            svc(
                "orders",
                "/orders",
                healthcheck_endpoint="/healthz",
                connect_timeout_ms=300,
                health_check={"interval_ms": 2000, "timeout_ms": 400, "unhealthy_threshold": 2},
                circuit_breaker={"max_connections": 10, "max_pending_requests": 5},
                outlier_detection={"consecutive_5xx": 2, "base_ejection_time_ms": 5000},
            )
        ),
        Options(),
    )
    c = cluster_named(snap, "orders")
    assert c.type == cluster_pb2.Cluster.EDS
    assert c.connect_timeout.ToMilliseconds() == 300
    (hc,) = c.health_checks
    assert hc.http_health_check.path == "/healthz"
    assert hc.interval.ToMilliseconds() == 2000
    assert hc.no_traffic_interval.ToMilliseconds() == 2000
    assert hc.timeout.ToMilliseconds() == 400
    assert hc.unhealthy_threshold.value == 2
    (thresholds,) = c.circuit_breakers.thresholds
    assert (thresholds.max_connections.value, thresholds.max_pending_requests.value) == (10, 5)
    assert c.outlier_detection.consecutive_5xx.value == 2
    assert c.outlier_detection.base_ejection_time.ToMilliseconds() == 5000


def test_no_healthcheck_endpoint_means_no_active_health_check() -> None:
    snap = build_snapshot(catalog(svc("orders", "/orders")), Options())
    assert not cluster_named(snap, "orders").health_checks


def test_every_url_becomes_an_endpoint() -> None:
    snap = build_snapshot(
        catalog(svc("orders", "/orders", ["http://10.0.0.1:80", "http://10.0.0.2:8080"])),
        Options(),
    )
    cla = snap.resources[typeurls.ENDPOINT]["orders"].message
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    addresses = [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for e in cla.endpoints[0].lb_endpoints
    ]
    assert addresses == [("10.0.0.1", 80), ("10.0.0.2", 8080)]


def test_hostnames_are_resolved_by_envoy_and_https_uses_tls() -> None:
    snap = build_snapshot(catalog(svc("users", "/users", "https://users.internal:8443")), Options())
    c = cluster_named(snap, "users")
    assert c.type == cluster_pb2.Cluster.STRICT_DNS
    assert c.load_assignment.endpoints[0].lb_endpoints[
        0
    ].endpoint.address.socket_address.address == ("users.internal")
    assert c.transport_socket.name == "envoy.transport_sockets.tls"
    assert "users" not in snap.resources[typeurls.ENDPOINT]
    assert snap.consistent() == []


def test_only_cacheable_services_use_the_cache() -> None:
    snap = build_snapshot(
        catalog(svc("a", "/a", cacheable=True), svc("b", "/b", cacheable=False)), Options()
    )
    assert "envoy.filters.http.cache" not in route_named(snap, "a").typed_per_filter_config
    assert "envoy.filters.http.cache" in route_named(snap, "b").typed_per_filter_config


def test_the_listener_binds_the_configured_port() -> None:
    snap = build_snapshot(catalog(svc("a", "/a")), Options("127.0.0.1", 12345))
    (res,) = snap.resources[typeurls.LISTENER].values()
    address = res.message.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 12345)


def test_the_listener_port_is_envoys_alone() -> None:
    # Unset, Envoy sets SO_REUSEPORT on Linux and a second Envoy would share the port.
    snap = build_snapshot(catalog(svc("a", "/a")), Options())
    (res,) = snap.resources[typeurls.LISTENER].values()
    assert res.message.HasField("enable_reuse_port")
    assert res.message.enable_reuse_port.value is False


def test_same_catalog_gives_byte_identical_resources_and_version() -> None:
    one = build_snapshot(load_catalog(SAMPLE), Options())
    two = build_snapshot(load_catalog(SAMPLE), Options())
    assert one.version == two.version
    for type_url in typeurls.PUSH_ORDER:
        assert [r.packed.SerializeToString() for r in one.resources[type_url].values()] == [
            r.packed.SerializeToString() for r in two.resources[type_url].values()
        ]


def test_a_type_version_changes_only_with_its_content() -> None:
    before = build_snapshot(catalog(svc("a", "/a", timeout_ms=1000)), Options())
    after = build_snapshot(catalog(svc("a", "/a", timeout_ms=2000)), Options())
    changed = {t for t in typeurls.PUSH_ORDER if before.versions[t] != after.versions[t]}
    assert changed == {typeurls.ROUTE}
    assert before.version != after.version


def test_the_sample_translation_is_consistent() -> None:
    assert build_snapshot(load_catalog(SAMPLE), Options()).consistent() == []


def test_a_cluster_without_its_endpoints_is_inconsistent() -> None:
    resources = translate(catalog(svc("a", "/a"), svc("b", "/b")), Options())
    resources[typeurls.ENDPOINT] = [r for r in resources[typeurls.ENDPOINT] if r[0] != "b"]
    problems = Snapshot.build(resources).consistent()
    assert problems == ["cluster 'b' has no endpoints 'b'"]


def test_a_listener_naming_missing_routes_is_inconsistent() -> None:
    resources = translate(catalog(svc("a", "/a")), Options())
    resources[typeurls.ROUTE] = []
    assert Snapshot.build(resources).consistent() == [
        "listener 'ingress_http' names missing routes 'ingress_routes'"
    ]


def test_a_route_naming_a_missing_cluster_is_inconsistent() -> None:
    resources = translate(catalog(svc("a", "/a"), svc("b", "/b")), Options())
    resources[typeurls.CLUSTER] = [r for r in resources[typeurls.CLUSTER] if r[0] != "b"]
    resources[typeurls.ENDPOINT] = [r for r in resources[typeurls.ENDPOINT] if r[0] != "b"]
    assert Snapshot.build(resources).consistent() == [
        "route 'b' in 'ingress_routes' names missing cluster 'b'"
    ]


def _filters(snap: Snapshot) -> list[Any]:
    res = snap.resources[typeurls.LISTENER]["ingress_http"]
    manager = hcm_pb2.HttpConnectionManager()
    res.message.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return list(manager.http_filters)


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_identity_headers_are_stripped_before_ext_authz_which_fails_closed(transport: str) -> None:
    snap = build_snapshot(
        # No retries: the retry filter would sit before the router (tests/unit/test_traffic.py).
        catalog(svc("a", "/a", cacheable=True, retry_policy=None)),
        Options(authz=AuthzOptions(transport=transport)),
    )
    filters = _filters(snap)
    assert [f.name for f in filters] == [
        "envoy.filters.http.header_mutation",
        "sidecar.strip_method_override",
        "envoy.filters.http.ext_authz",
        "sidecar.cache.hide_authorization",
        "envoy.filters.http.cache",
        "sidecar.cache.restore_authorization",
        "envoy.filters.http.router",
    ]
    mutation = header_mutation_pb2.HeaderMutation()
    filters[0].typed_config.Unpack(mutation)
    removed = {m.remove for m in mutation.mutations.request_mutations}
    assert removed == {"x-user-id", "x-user-roles", "x-tenant-upstream", "x-sidecar-route-policy"}
    config = ext_authz_pb2.ExtAuthz()
    filters[2].typed_config.Unpack(config)
    assert config.failure_mode_allow is False
    assert config.status_on_error.code == 503
    if transport == "grpc":
        assert config.grpc_service.envoy_grpc.cluster_name == "ext_authz"
        assert config.grpc_service.timeout.ToMilliseconds() == 200
    else:
        uri = config.http_service.server_uri
        assert (uri.cluster, uri.timeout.ToMilliseconds()) == ("ext_authz", 200)


def test_in_http_mode_envoy_forwards_every_header_and_reads_only_ours() -> None:
    options = Options(authz=AuthzOptions(transport="http"))
    snap = build_snapshot(catalog(svc("a", "/a")), options)
    config = ext_authz_pb2.ExtAuthz()
    _filters(snap)[2].typed_config.Unpack(config)
    service = config.http_service
    assert service.path_prefix == "/sidecar-check"
    # The filter's own list (the HttpService's is deprecated in Envoy 1.40); without one, Envoy
    # forwards only a few headers and a trace id or the header count would be lost.
    (everything,) = config.allowed_headers.patterns
    assert everything.safe_regex.regex == ".*"
    assert not service.authorization_request.allowed_headers.patterns
    response = service.authorization_response

    def names(matcher: Any) -> set[str]:
        return {p.exact for p in matcher.patterns}

    assert names(response.allowed_upstream_headers) == {
        "x-user-id",
        "x-user-roles",
        "x-tenant-id",
        "x-tenant-upstream",
        "x-request-id",
    }
    assert "ratelimit" in names(response.allowed_client_headers_on_success)
    assert {"www-authenticate", "retry-after", "content-type"} <= names(
        response.allowed_client_headers
    )
    # The route's own service replaces the filter's, with the policy added.
    route_service = authz_config.per_route(route_named(snap, "a")).check_settings.http_service
    assert route_service.server_uri == service.server_uri
    assert authz_config.route_policy(route_named(snap, "a"))


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_each_route_carries_its_services_policy(transport: str) -> None:
    snap = build_snapshot(
        catalog(
            svc("orders", "/orders", tenant_scope="tenant", rate_limit={"requests_per_second": 5}),
            roles={"clerk": ["orders:read"]},
        ),
        Options(authz=AuthzOptions(transport=transport)),
    )
    policy = decode(authz_config.route_policy(route_named(snap, "orders")))
    assert policy.service == "orders"
    assert policy.allowed_roles["read"] == {"clerk"}
    assert policy.tenant_scope == "tenant"
    assert policy.rate_limit is not None and policy.rate_limit.limit == 5


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_public_routes_skip_ext_authz_unless_limited_and_drop_the_tenant_header(
    transport: str,
) -> None:
    snap = build_snapshot(
        catalog(
            svc("open", "/open", public=True),
            svc("limited", "/limited", public=True, rate_limit={"requests_per_minute": 5}),
        ),
        Options(authz=AuthzOptions(transport=transport)),
    )
    assert authz_config.per_route(route_named(snap, "open")).disabled is True
    assert not authz_config.per_route(route_named(snap, "limited")).disabled
    assert authz_config.route_policy(route_named(snap, "limited"))
    assert list(route_named(snap, "open").request_headers_to_remove) == ["x-tenant-id"]


def test_a_tenant_upstream_gets_its_own_cluster_and_a_header_matched_route_first() -> None:
    snap = build_snapshot(
        catalog(svc("orders", "/orders", tenant_upstreams={"acme": "http://10.9.9.9:80"})),
        Options(),
    )
    routes = routes_of(snap)
    assert [r.name for r in routes] == ["orders.acme", "orders"]
    (header,) = routes[0].match.headers
    assert (header.name, header.string_match.exact) == ("x-tenant-upstream", "acme")
    assert routes[0].route.cluster == "orders.acme"
    assert "orders.acme" in snap.resources[typeurls.CLUSTER]
    assert snap.consistent() == []


def test_clusters_drop_removed_hosts_and_enforce_gateway_failure_ejection() -> None:
    snap = build_snapshot(
        catalog(svc("orders", "/orders", outlier_detection={"consecutive_gateway_failure": 4})),
        Options(),
    )
    cluster = cluster_named(snap, "orders")
    # A host the catalog no longer lists leaves even while it passes health checks.
    assert cluster.ignore_health_on_host_removal is True
    outlier = cluster.outlier_detection
    assert outlier.consecutive_gateway_failure.value == 4
    # Envoy's default enforcement for gateway failures is 0 %: the setting would do nothing.
    assert outlier.enforcing_consecutive_gateway_failure.value == 100


def test_routes_are_validated_against_envoys_clusters() -> None:
    snap = build_snapshot(catalog(svc("orders", "/orders")), Options())
    (res,) = snap.resources[typeurls.ROUTE].values()
    assert isinstance(res.message, route_pb2.RouteConfiguration)
    assert res.message.validate_clusters.value is True


def _manager(snap: Snapshot) -> hcm_pb2.HttpConnectionManager:
    (res,) = snap.resources[typeurls.LISTENER].values()
    assert isinstance(res.message, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    res.message.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_envoy_writes_a_json_access_log_line_per_request_without_query_strings() -> None:
    manager = _manager(build_snapshot(catalog(svc("orders", "/orders")), Options()))
    (log,) = manager.access_log
    assert log.name == "envoy.access_loggers.stdout"
    config = stream_pb2.StdoutAccessLog()
    log.typed_config.Unpack(config)
    fields = config.log_format.json_format.fields
    assert fields["request_id"].string_value == "%REQ(X-REQUEST-ID)%"
    assert fields["trace_id"].string_value == "%TRACE_ID%"
    assert fields["path"].string_value == "%PATH(NQ)%"  # never the query (it may hold a token)
    off = Options(observability=ObservabilityOptions(access_log="off"))
    assert not _manager(build_snapshot(catalog(svc("orders", "/orders")), off)).access_log


def test_envoy_traces_to_the_collector_only_when_one_is_configured() -> None:
    plain = build_snapshot(catalog(svc("orders", "/orders")), Options())
    assert not _manager(plain).HasField("tracing")
    assert "_otel_collector" not in plain.resources[typeurls.CLUSTER]
    traced = Options(
        observability=ObservabilityOptions(tracing=TracingOptions("jaeger", 4317, 25.0))
    )
    snap = build_snapshot(catalog(svc("orders", "/orders")), traced)
    tracing = _manager(snap).tracing
    assert tracing.provider.name == "envoy.tracers.opentelemetry"
    assert tracing.random_sampling.value == 25.0
    collector = cluster_named(snap, "_otel_collector")
    address = collector.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == ("jaeger", 4317)
