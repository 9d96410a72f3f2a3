"""Pure translation of a validated catalog into Envoy resources. No I/O.

The same catalog and options always give byte-identical resources (fields are set in a fixed
order and maps are serialized deterministically by the snapshot), so every replica computes
the same version.

Routing contract: a service owns its `base_path` and everything below it (`/orders` matches
`/orders`, `/orders/` and `/orders/42`, never `/ordersx`). When one service's path is a prefix
of another's, the longer path wins. Paths reach the upstream unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cache.v3 import cache_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.cache.simple_http_cache.v3 import config_pb2 as simple_cache_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from xds_server import typeurls
from xds_server.catalog import Catalog, Service
from xds_server.snapshot import Snapshot

LISTENER_NAME = "ingress_http"
ROUTE_CONFIG_NAME = "ingress_routes"
CACHE_FILTER = "envoy.filters.http.cache"


@dataclass(frozen=True)
class Options:
    """What the translation needs besides the catalog; built once from the server's settings."""

    listener_address: str = "0.0.0.0"
    listener_port: int = 10000


def duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _pack(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)
    return out


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


@dataclass(frozen=True)
class _Upstream:
    host: str
    port: int
    tls: bool

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _upstreams(svc: Service) -> list[_Upstream]:
    out = []
    for url in svc.urls:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None  # checked by the catalog
        out.append(_Upstream(parts.hostname, parts.port, parts.scheme == "https"))
    return out


def _uses_dns(svc: Service) -> bool:
    """Hostnames need DNS resolution by Envoy; EDS takes only IP addresses."""
    return not all(u.is_ip for u in _upstreams(svc))


def load_assignment(svc: Service) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=u.host, port_value=u.port)
                )
            )
        )
        for u in _upstreams(svc)
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=svc.service_name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )


def cluster(svc: Service) -> cluster_pb2.Cluster:
    cb = svc.circuit_breaker
    od = svc.outlier_detection
    out = cluster_pb2.Cluster(
        name=svc.service_name,
        connect_timeout=duration(svc.connect_timeout_ms),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.RoutingPriority.DEFAULT,
                    max_connections=wrappers_pb2.UInt32Value(value=cb.max_connections),
                    max_pending_requests=wrappers_pb2.UInt32Value(value=cb.max_pending_requests),
                    max_requests=wrappers_pb2.UInt32Value(value=cb.max_requests),
                    max_retries=wrappers_pb2.UInt32Value(value=cb.max_retries),
                )
            ]
        ),
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
            consecutive_gateway_failure=wrappers_pb2.UInt32Value(
                value=od.consecutive_gateway_failure
            ),
            interval=duration(od.interval_ms),
            base_ejection_time=duration(od.base_ejection_time_ms),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
        ),
    )
    if _uses_dns(svc):
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(load_assignment(svc))
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(_ads_source())
        out.eds_cluster_config.service_name = svc.service_name
    if svc.healthcheck_endpoint is not None:
        hc = svc.health_check
        out.health_checks.append(
            health_check_pb2.HealthCheck(
                timeout=duration(hc.timeout_ms),
                interval=duration(hc.interval_ms),
                # Without traffic Envoy would check only once a minute.
                no_traffic_interval=duration(hc.interval_ms),
                unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy_threshold),
                healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy_threshold),
                http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(
                    path=svc.healthcheck_endpoint
                ),
            )
        )
    tls_hosts = [u for u in _upstreams(svc) if u.tls]
    if tls_hosts:
        out.transport_socket.name = "envoy.transport_sockets.tls"
        out.transport_socket.typed_config.CopyFrom(
            _pack(tls_pb2.UpstreamTlsContext(sni=tls_hosts[0].host))
        )
    return out


def _retry_policy(svc: Service) -> route_components_pb2.RetryPolicy | None:
    rp = svc.retry_policy
    if rp is None or rp.max_retries == 0:
        return None
    out = route_components_pb2.RetryPolicy(
        retry_on=",".join(rp.retry_on),
        num_retries=wrappers_pb2.UInt32Value(value=rp.max_retries),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=duration(rp.backoff_base_ms),
            max_interval=duration(rp.backoff_max_ms),
        ),
        # Prefer another endpoint for the retry when there is one.
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )
    if rp.per_try_timeout_ms is not None:
        out.per_try_timeout.CopyFrom(duration(rp.per_try_timeout_ms))
    return out


def route(svc: Service, *, with_cache_filter: bool) -> route_components_pb2.Route:
    prefix = svc.route_prefix
    match = (
        route_components_pb2.RouteMatch(prefix="/")
        if prefix == "/"
        else route_components_pb2.RouteMatch(path_separated_prefix=prefix)
    )
    action = route_components_pb2.RouteAction(
        cluster=svc.service_name, timeout=duration(svc.timeout_ms)
    )
    retry = _retry_policy(svc)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    out = route_components_pb2.Route(name=svc.service_name, match=match, route=action)
    if with_cache_filter and not svc.cacheable:
        out.typed_per_filter_config[CACHE_FILTER].CopyFrom(
            _pack(route_components_pb2.FilterConfig(disabled=True))
        )
    return out


def _sorted_for_routing(services: Sequence[Service]) -> list[Service]:
    # Longest prefix first; the name breaks ties so the order never depends on file order.
    return sorted(services, key=lambda s: (-len(s.route_prefix), s.route_prefix, s.service_name))


def route_configuration(catalog: Catalog) -> route_pb2.RouteConfiguration:
    with_cache = _needs_cache_filter(catalog)
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="services",
                domains=["*"],
                routes=[
                    route(s, with_cache_filter=with_cache)
                    for s in _sorted_for_routing(catalog.services)
                ],
            )
        ],
    )


def _needs_cache_filter(catalog: Catalog) -> bool:
    return any(s.cacheable for s in catalog.services)


def http_filters(catalog: Catalog) -> list[hcm_pb2.HttpFilter]:
    """The listener's HTTP filter chain, in order. The router is always last."""
    filters: list[hcm_pb2.HttpFilter] = []
    if _needs_cache_filter(catalog):
        filters.append(
            hcm_pb2.HttpFilter(
                name=CACHE_FILTER,
                typed_config=_pack(
                    cache_pb2.CacheConfig(
                        typed_config=_pack(simple_cache_pb2.SimpleHttpCacheConfig())
                    )
                ),
            )
        )
    filters.append(
        hcm_pb2.HttpFilter(
            name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router())
        )
    )
    return filters


def listener(catalog: Catalog, options: Options) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="ingress_http",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads_source(), route_config_name=ROUTE_CONFIG_NAME),
        http_filters=http_filters(catalog),
        # An edge proxy: trust the peer address, not client-sent forwarding headers, and
        # give every external request a fresh x-request-id.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT,
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=options.listener_address, port_value=options.listener_port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_pack(manager),
                    )
                ]
            )
        ],
    )


def translate(catalog: Catalog, options: Options) -> dict[str, list[tuple[str, Message]]]:
    """Catalog → resources by type URL, each as (name, message)."""
    services = sorted(catalog.services, key=lambda s: s.service_name)
    return {
        typeurls.CLUSTER: [(s.service_name, cluster(s)) for s in services],
        typeurls.ENDPOINT: [
            (s.service_name, load_assignment(s)) for s in services if not _uses_dns(s)
        ],
        typeurls.LISTENER: [(LISTENER_NAME, listener(catalog, options))],
        typeurls.ROUTE: [(ROUTE_CONFIG_NAME, route_configuration(catalog))],
    }


def build_snapshot(catalog: Catalog, options: Options) -> Snapshot:
    """Translate and package; the caller checks `consistent()` before serving it."""
    return Snapshot.build(translate(catalog, options))
