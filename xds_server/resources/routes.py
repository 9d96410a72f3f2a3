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
from xds_server.catalog import Catalog, RetryPolicy, Service
from xds_server.resources.clusters import tenant_cluster_name
from xds_server.resources.common import (
    AUTHZ_FILTER,
    CACHE_FILTER,
    FILTER_DISABLED,
    PREVIOUS_HOSTS,
    ROUTE_CONFIG_NAME,
    pack,
    set_ms,
)
from xds_server.route_policy import compile_policy


def _set_retry_policy(rp: RetryPolicy, out: route_components_pb2.RetryPolicy) -> None:
    out.retry_on = ",".join(rp.retry_on)
    out.num_retries.value = rp.max_retries
    set_ms(out.retry_back_off.base_interval, rp.backoff_base_ms)
    set_ms(out.retry_back_off.max_interval, rp.backoff_max_ms)
    # Prefer another endpoint for the retry when there is one.
    out.retry_host_predicate.append(PREVIOUS_HOSTS)
    out.host_selection_retry_max_attempts = 3
    if rp.per_try_timeout_ms is not None:
        set_ms(out.per_try_timeout, rp.per_try_timeout_ms)


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
) -> route_components_pb2.Route:
    out: route_components_pb2.Route = routes.add(name=name)
    prefix = svc.route_prefix
    if prefix == "/":
        out.match.prefix = "/"
    else:
        out.match.path_separated_prefix = prefix
    out.route.cluster = cluster_name
    set_ms(out.route.timeout, svc.timeout_ms)
    rp = svc.retry_policy
    if rp is not None and rp.max_retries > 0:
        _set_retry_policy(rp, out.route.retry_policy)
    out.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(authz)
    if with_cache_filter and not svc.cacheable:
        out.typed_per_filter_config[CACHE_FILTER].CopyFrom(FILTER_DISABLED)
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


def routing_order(services: Sequence[Service]) -> list[Service]:
    """The services in the order their routes are matched (the route configuration's)."""
    return _sorted_for_routing(services)


def _sorted_for_routing(services: Sequence[Service]) -> list[Service]:
    # Longest prefix first; the name breaks ties so the order never depends on file order.
    return sorted(services, key=_routing_key)


def _routing_key(s: Service) -> tuple[int, str, str]:
    prefix = s.route_prefix
    return (-len(prefix), prefix, s.service_name)


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
