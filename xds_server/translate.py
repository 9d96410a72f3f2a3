"""Pure translation of a validated catalog into Envoy resources. No I/O.

The same catalog and options always give byte-identical resources (fields are set in a fixed
order and maps are serialized deterministically by the snapshot), so every replica computes
the same version.

Routing contract: a service owns its `base_path` and everything below it (`/orders` matches
`/orders`, `/orders/` and `/orders/42`, never `/ordersx`). When one service's path is a prefix
of another's, the longer path wins. Paths reach the upstream unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cache.v3 import cache_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.cache.simple_http_cache.v3 import config_pb2 as simple_cache_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from sidecar_shared import defaults
from sidecar_shared.contract import (
    AUTHZ_CLUSTER,
    POLICY_KEY,
    ROLES_HEADER,
    SERVICE_KEY,
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
    USER_HEADER,
)
from sidecar_shared.contract import encode as encode_policy
from xds_server import typeurls
from xds_server.catalog import Catalog, RetryPolicy, Service, Upstream
from xds_server.route_policy import compile_policy
from xds_server.snapshot import Snapshot

LISTENER_NAME = "ingress_http"
ROUTE_CONFIG_NAME = "ingress_routes"
CACHE_FILTER = "envoy.filters.http.cache"
AUTHZ_FILTER = "envoy.filters.http.ext_authz"
HEADER_MUTATION_FILTER = "envoy.filters.http.header_mutation"


@dataclass(frozen=True)
class AuthzOptions:
    """How Envoy calls ext_authz. The cluster is defined in Envoy's bootstrap."""

    cluster: str = AUTHZ_CLUSTER
    timeout_ms: int = defaults.AUTHZ_TIMEOUT_MS
    # answered when ext_authz cannot be reached (fail closed)
    failure_status: int = defaults.AUTHZ_FAILURE_STATUS


@dataclass(frozen=True)
class Options:
    """What the translation needs besides the catalog; built once from the server's settings."""

    listener_address: str = defaults.LISTENER_ADDRESS
    listener_port: int = defaults.LISTENER_PORT
    authz: AuthzOptions = AuthzOptions()


def _pack(msg: Message) -> any_pb2.Any:
    return any_pb2.Any(
        type_url="type.googleapis.com/" + msg.DESCRIPTOR.full_name,
        value=msg.SerializeToString(deterministic=True),
    )


# Messages that are the same on every route; CopyFrom copies them into place.
_PREVIOUS_HOSTS = route_components_pb2.RetryPolicy.RetryHostPredicate(
    name="envoy.retry_host_predicates.previous_hosts",
    typed_config=_pack(previous_hosts_pb2.PreviousHostsPredicate()),
)
_FILTER_DISABLED = _pack(route_components_pb2.FilterConfig(disabled=True))


_ADS_SOURCE = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.ApiVersion.V3,
)


def _uses_dns(ups: list[Upstream]) -> bool:
    """Hostnames need DNS resolution by Envoy; EDS takes only IP addresses."""
    return not all(u.is_ip for u in ups)


def tenant_cluster_name(service: str, tenant: str) -> str:
    # Service names cannot hold '.', so this never collides with a service's own cluster.
    return f"{service}.{tenant}"


def load_assignment(name: str, ups: list[Upstream]) -> endpoint_pb2.ClusterLoadAssignment:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    locality = out.endpoints.add()
    for u in ups:
        address = locality.lb_endpoints.add().endpoint.address.socket_address
        address.address = u.host
        address.port_value = u.port
    return out


def _set_ms(field: duration_pb2.Duration, ms: int) -> None:
    field.seconds = ms // 1000
    field.nanos = (ms % 1000) * 1_000_000


def cluster(svc: Service, ups: list[Upstream], name: str | None = None) -> cluster_pb2.Cluster:
    """The cluster for a service's upstreams (`name` defaults to the service's name)."""
    name = name or svc.service_name
    # Fields are set in place: nested constructor arguments would copy each subtree again.
    out = cluster_pb2.Cluster(name=name, lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
    _set_ms(out.connect_timeout, svc.connect_timeout_ms)
    # A host the catalog no longer lists leaves at once, even while it passes health checks
    # (otherwise Envoy keeps it as pending_dynamic_removal and keeps sending it traffic).
    out.ignore_health_on_host_removal = True
    cb = svc.circuit_breaker
    thresholds = out.circuit_breakers.thresholds.add(priority=base_pb2.RoutingPriority.DEFAULT)
    thresholds.max_connections.value = cb.max_connections
    thresholds.max_pending_requests.value = cb.max_pending_requests
    thresholds.max_requests.value = cb.max_requests
    thresholds.max_retries.value = cb.max_retries
    od = svc.outlier_detection
    outlier = out.outlier_detection
    outlier.consecutive_5xx.value = od.consecutive_5xx
    outlier.consecutive_gateway_failure.value = od.consecutive_gateway_failure
    # Envoy enforces gateway-failure ejections 0 % of the time unless told otherwise.
    outlier.enforcing_consecutive_gateway_failure.value = 100
    _set_ms(outlier.interval, od.interval_ms)
    _set_ms(outlier.base_ejection_time, od.base_ejection_time_ms)
    outlier.max_ejection_percent.value = od.max_ejection_percent
    if _uses_dns(ups):
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(load_assignment(name, ups))
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(_ADS_SOURCE)
        out.eds_cluster_config.service_name = name
    if svc.healthcheck_endpoint is not None:
        hc = svc.health_check
        check = out.health_checks.add()
        _set_ms(check.timeout, hc.timeout_ms)
        _set_ms(check.interval, hc.interval_ms)
        # Without traffic Envoy would check only once a minute.
        _set_ms(check.no_traffic_interval, hc.interval_ms)
        check.unhealthy_threshold.value = hc.unhealthy_threshold
        check.healthy_threshold.value = hc.healthy_threshold
        check.http_health_check.path = svc.healthcheck_endpoint
    tls_hosts = [u for u in ups if u.tls]
    if tls_hosts:
        out.transport_socket.name = "envoy.transport_sockets.tls"
        out.transport_socket.typed_config.CopyFrom(
            _pack(tls_pb2.UpstreamTlsContext(sni=tls_hosts[0].host))
        )
    return out


def _set_retry_policy(rp: RetryPolicy, out: route_components_pb2.RetryPolicy) -> None:
    out.retry_on = ",".join(rp.retry_on)
    out.num_retries.value = rp.max_retries
    _set_ms(out.retry_back_off.base_interval, rp.backoff_base_ms)
    _set_ms(out.retry_back_off.max_interval, rp.backoff_max_ms)
    # Prefer another endpoint for the retry when there is one.
    out.retry_host_predicate.append(_PREVIOUS_HOSTS)
    out.host_selection_retry_max_attempts = 3
    if rp.per_try_timeout_ms is not None:
        _set_ms(out.per_try_timeout, rp.per_try_timeout_ms)


def _authz_per_route(catalog: Catalog, svc: Service) -> any_pb2.Any:
    """The service's policy for ext_authz, or ext_authz off for public routes with no limit."""
    if svc.public and svc.rate_limit is None:
        return _pack(ext_authz_pb2.ExtAuthzPerRoute(disabled=True))
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    context = per_route.check_settings.context_extensions
    context[SERVICE_KEY] = svc.service_name
    context[POLICY_KEY] = encode_policy(compile_policy(catalog, svc))
    return _pack(per_route)


def _add_route(
    routes: Any,
    svc: Service,
    *,
    name: str,
    cluster_name: str,
    authz: any_pb2.Any,
    with_cache_filter: bool,
) -> route_components_pb2.Route:
    out: route_components_pb2.Route = routes.add(name=name)
    prefix = svc.route_prefix
    if prefix == "/":
        out.match.prefix = "/"
    else:
        out.match.path_separated_prefix = prefix
    out.route.cluster = cluster_name
    _set_ms(out.route.timeout, svc.timeout_ms)
    rp = svc.retry_policy
    if rp is not None and rp.max_retries > 0:
        _set_retry_policy(rp, out.route.retry_policy)
    out.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(authz)
    if with_cache_filter and not svc.cacheable:
        out.typed_per_filter_config[CACHE_FILTER].CopyFrom(_FILTER_DISABLED)
    if svc.public:
        # No verified identity on a public route: a client's tenant header goes too. (The
        # router applies this after ext_authz, which sets nothing here.)
        out.request_headers_to_remove.append(TENANT_HEADER)
    return out


def add_service_routes(routes: Any, catalog: Catalog, svc: Service, *, with_cache: bool) -> None:
    """Append a service's routes to a repeated `routes` field: one per tenant with its own
    upstream (matched on the header ext_authz sets), then the service's own."""
    authz = _authz_per_route(catalog, svc)
    for tenant in sorted(svc.tenant_upstreams):
        r = _add_route(
            routes,
            svc,
            name=tenant_cluster_name(svc.service_name, tenant),
            cluster_name=tenant_cluster_name(svc.service_name, tenant),
            authz=authz,
            with_cache_filter=with_cache,
        )
        header = r.match.headers.add(name=TENANT_UPSTREAM_HEADER)
        header.string_match.exact = tenant
    _add_route(
        routes,
        svc,
        name=svc.service_name,
        cluster_name=svc.service_name,
        authz=authz,
        with_cache_filter=with_cache,
    )


def _sorted_for_routing(services: Sequence[Service]) -> list[Service]:
    # Longest prefix first; the name breaks ties so the order never depends on file order.
    return sorted(services, key=lambda s: (-len(s.route_prefix), s.route_prefix, s.service_name))


def route_configuration(catalog: Catalog) -> route_pb2.RouteConfiguration:
    with_cache = _needs_cache_filter(catalog)
    # Envoy rejects (NACKs) routes naming a cluster it does not have instead of answering 503.
    out = route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME, validate_clusters=wrappers_pb2.BoolValue(value=True)
    )
    host = out.virtual_hosts.add(name="services", domains=["*"])
    for svc in _sorted_for_routing(catalog.services):
        add_service_routes(host.routes, catalog, svc, with_cache=with_cache)
    return out


def _needs_cache_filter(catalog: Catalog) -> bool:
    return any(s.cacheable for s in catalog.services)


def _strip_client_identity() -> hcm_pb2.HttpFilter:
    """Removes identity headers a client sent, before ext_authz or routing sees them.

    `x-tenant-id` stays for ext_authz to compare with the token (it overwrites or removes it
    on allow; public routes remove it at the router)."""
    mutation = header_mutation_pb2.HeaderMutation()
    for name in (USER_HEADER, ROLES_HEADER, TENANT_UPSTREAM_HEADER):
        mutation.mutations.request_mutations.add(remove=name)
    return hcm_pb2.HttpFilter(name=HEADER_MUTATION_FILTER, typed_config=_pack(mutation))


def _ext_authz(catalog: Catalog, options: AuthzOptions) -> hcm_pb2.HttpFilter:
    config = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=False,
        # Routing may depend on the headers ext_authz sets (tenant upstreams).
        clear_route_cache=any(s.tenant_upstreams for s in catalog.services),
    )
    config.grpc_service.envoy_grpc.cluster_name = options.cluster
    _set_ms(config.grpc_service.timeout, options.timeout_ms)
    config.status_on_error.code = options.failure_status
    return hcm_pb2.HttpFilter(name=AUTHZ_FILTER, typed_config=_pack(config))


def http_filters(catalog: Catalog, options: Options) -> list[hcm_pb2.HttpFilter]:
    """The listener's HTTP filter chain, in order: strip client identity headers, ext_authz,
    cache (when a service is cacheable), router."""
    filters = [_strip_client_identity(), _ext_authz(catalog, options.authz)]
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
        rds=hcm_pb2.Rds(config_source=_ADS_SOURCE, route_config_name=ROUTE_CONFIG_NAME),
        http_filters=http_filters(catalog, options),
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
    clusters: list[tuple[str, Message]] = []
    endpoints: list[tuple[str, Message]] = []
    for s in services:
        for name, ups in [(s.service_name, s.upstreams)] + [
            (tenant_cluster_name(s.service_name, t), s.tenant_upstreams_of(t))
            for t in sorted(s.tenant_upstreams)
        ]:
            clusters.append((name, cluster(s, ups, name)))
            if not _uses_dns(ups):
                endpoints.append((name, load_assignment(name, ups)))
    return {
        typeurls.CLUSTER: clusters,
        typeurls.ENDPOINT: endpoints,
        typeurls.LISTENER: [(LISTENER_NAME, listener(catalog, options))],
        typeurls.ROUTE: [(ROUTE_CONFIG_NAME, route_configuration(catalog))],
    }


def build_snapshot(catalog: Catalog, options: Options) -> Snapshot:
    """Translate and package; the caller checks `consistent()` before serving it."""
    return Snapshot.build(translate(catalog, options))
