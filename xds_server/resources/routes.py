"""The route configuration: one route per service (and per tenant upstream), longest base path
first, each with its timeout, retries and ext_authz policy.

Routing contract: a service owns its `base_path` and everything below it (`/orders` matches
`/orders`, `/orders/` and `/orders/42`, never `/ordersx`). When one service's path is a prefix
of another's, the longer path wins. Paths reach the upstream unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from google.protobuf import any_pb2, wrappers_pb2

from sidecar_shared.contract import (
    POLICY_KEY,
    SERVICE_KEY,
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
)
from sidecar_shared.contract import encode as encode_policy
from xds_server.catalog import Catalog, Service
from xds_server.resources.cache import set_route_cache
from xds_server.resources.clusters import tenant_cluster_name, version_cluster_name
from xds_server.resources.common import (
    AUTHZ_FILTER,
    ROUTE_CONFIG_NAME,
    pack,
    set_ms,
)
from xds_server.resources.retries import set_retry_policy
from xds_server.route_policy import compile_policy


def _authz_per_route(catalog: Catalog, svc: Service) -> any_pb2.Any:
    """The service's policy for ext_authz, or ext_authz off for public routes with no limit."""
    if svc.public and svc.rate_limit is None:
        return pack(ext_authz_pb2.ExtAuthzPerRoute(disabled=True))
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    context = per_route.check_settings.context_extensions
    context[SERVICE_KEY] = svc.service_name
    context[POLICY_KEY] = encode_policy(compile_policy(catalog, svc))
    return pack(per_route)


def _add_route(
    routes: Any,
    svc: Service,
    *,
    name: str,
    cluster_name: str,
    authz: any_pb2.Any,
    with_cache_filter: bool,
    header: tuple[str, str] | None = None,
    prefix: str | None = None,
) -> None:
    """Append the route for `prefix` (the service's by default) and `header` with this exact
    value."""
    out: route_components_pb2.Route = routes.add(name=name)
    prefix = prefix or svc.route_prefix
    if prefix == "/":
        out.match.prefix = "/"
    else:
        out.match.path_separated_prefix = prefix
    if header is not None:
        match = out.match.headers.add(name=header[0])
        match.string_match.exact = header[1]
    out.route.cluster = cluster_name
    set_ms(out.route.timeout, svc.timeout_ms)
    if svc.protocol == "grpc":
        # A client's grpc-timeout is honoured, up to the service's timeout.
        set_ms(out.route.max_stream_duration.grpc_timeout_header_max, svc.timeout_ms)
    if svc.websocket:
        out.route.upgrade_configs.add(upgrade_type="websocket")
    out.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(authz)
    if with_cache_filter:
        set_route_cache(out, svc.cacheable)
    if svc.public:
        # No verified identity on a public route: a client's tenant header goes too. (The
        # router applies this after ext_authz, which sets nothing here.)
        out.request_headers_to_remove.append(TENANT_HEADER)
    rp = svc.retry_policy
    if rp is not None and rp.max_retries > 0:
        set_retry_policy(rp, out)


def add_service_routes(routes: Any, catalog: Catalog, svc: Service, *, with_cache: bool) -> None:
    """Append a service's routes to a repeated `routes` field: per API version one for its path
    and one for its header, one per tenant with its own upstream (matched on the header ext_authz
    sets), then the service's own."""
    authz = _authz_per_route(catalog, svc)
    # Every version's path first: a path names its version even when a header names another.
    by_path = [(v, svc.version_prefix(v), None) for v in sorted(svc.versions)]
    by_header = [(v, None, (svc.version_header, v)) for v in sorted(svc.versions)]
    for version, prefix, header in by_path + by_header:
        name = version_cluster_name(svc.service_name, version)
        _add_route(
            routes,
            svc,
            name=name,
            cluster_name=name,
            authz=authz,
            with_cache_filter=with_cache,
            header=header,
            prefix=prefix,
        )
    for tenant in sorted(svc.tenant_upstreams):
        _add_route(
            routes,
            svc,
            name=tenant_cluster_name(svc.service_name, tenant),
            cluster_name=tenant_cluster_name(svc.service_name, tenant),
            authz=authz,
            with_cache_filter=with_cache,
            header=(TENANT_UPSTREAM_HEADER, tenant),
        )
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
    with_cache = needs_cache_filter(catalog)
    # Envoy rejects (NACKs) routes naming a cluster it does not have instead of answering 503.
    out = route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME, validate_clusters=wrappers_pb2.BoolValue(value=True)
    )
    host = out.virtual_hosts.add(name="services", domains=["*"])
    for svc in _sorted_for_routing(catalog.services):
        add_service_routes(host.routes, catalog, svc, with_cache=with_cache)
    return out


def needs_cache_filter(catalog: Catalog) -> bool:
    return any(s.cacheable for s in catalog.services)
