"""The route configuration: one route per service (and per tenant upstream), longest base path
first, each with its timeout, retries and ext_authz policy.

Routing contract: a service owns its `base_path` and everything below it (`/orders` matches
`/orders`, `/orders/` and `/orders/42`, never `/ordersx`). When one service's path is a prefix
of another's, the longer path wins. Paths reach the upstream unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from google.protobuf import any_pb2, wrappers_pb2

from sidecar_shared.contract import (
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
)
from sidecar_shared.contract import encode as encode_policy
from xds_server.catalog import Catalog, RetryPolicy, Service
from xds_server.resources.authz import per_route as authz_per_route
from xds_server.resources.clusters import tenant_cluster_name
from xds_server.resources.common import (
    AUTHZ_FILTER,
    BUFFER_FILTER,
    CACHE_FILTER,
    FILTER_DISABLED,
    METHOD_OVERRIDE_FILTER,
    PREVIOUS_HOSTS,
    ROUTE_CONFIG_NAME,
    AuthzOptions,
    pack,
    set_ms,
)
from xds_server.route_policy import compile_policy

DEFAULT_AUTHZ = AuthzOptions()


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


def _authz_per_route(catalog: Catalog, svc: Service, authz: AuthzOptions) -> any_pb2.Any:
    """The service's policy for ext_authz, or ext_authz off for public routes with no limit."""
    if svc.public and svc.rate_limit is None:
        return AUTHZ_DISABLED
    policy = encode_policy(compile_policy(catalog, svc))
    return pack(authz_per_route(authz, svc.service_name, policy))


def _match_base_path(match: route_components_pb2.RouteMatch, svc: Service) -> None:
    prefix = svc.route_prefix
    if prefix == "/":
        match.prefix = "/"
    else:
        match.path_separated_prefix = prefix


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
    _match_base_path(out.match, svc)
    out.route.cluster = cluster_name
    set_ms(out.route.timeout, svc.timeout_ms)
    rp = svc.retry_policy
    if rp is not None and rp.max_retries > 0:
        _set_retry_policy(rp, out.route.retry_policy)
    out.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(authz)
    if with_cache_filter and not svc.cacheable:
        out.typed_per_filter_config[CACHE_FILTER].CopyFrom(FILTER_DISABLED)
    if svc.method_override:
        out.typed_per_filter_config[METHOD_OVERRIDE_FILTER].CopyFrom(FILTER_DISABLED)
    if svc.max_request_body_bytes is not None:
        out.typed_per_filter_config[BUFFER_FILTER].CopyFrom(body_limit(svc.max_request_body_bytes))
    if svc.public:
        # No verified identity on a public route: a client's tenant header goes too. (The
        # router applies this after ext_authz, which sets nothing here.)
        out.request_headers_to_remove.append(TENANT_HEADER)
    return out


def add_service_routes(
    routes: Any,
    catalog: Catalog,
    svc: Service,
    *,
    with_cache: bool,
    authz: AuthzOptions = DEFAULT_AUTHZ,
) -> None:
    """Append a service's routes to a repeated `routes` field: one per tenant with its own
    upstream (matched on the header ext_authz sets), then the service's own. A strict service
    with longer base paths under it first gets a route refusing their look-alikes."""
    policy = _authz_per_route(catalog, svc, authz)
    for i, guard in enumerate(lookalike_regexes(svc, catalog.services)):
        refuse: route_components_pb2.Route = routes.add(name=f"{svc.service_name}.lookalike.{i}")
        refuse.match.safe_regex.regex = guard
        refuse.direct_response.status = 400
        refuse.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(AUTHZ_DISABLED)
    if svc.max_request_body_bytes is not None:
        # A declared length above the limit is refused before anything is read or checked;
        # a chunked body meets the buffer filter once ext_authz allowed it.
        too_large: route_components_pb2.Route = routes.add(name=f"{svc.service_name}.too_large")
        _match_base_path(too_large.match, svc)
        length = too_large.match.headers.add(name="content-length")
        length.range_match.start = svc.max_request_body_bytes + 1
        length.range_match.end = 2**63 - 1
        too_large.direct_response.status = 413
        too_large.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(AUTHZ_DISABLED)
    for tenant in sorted(svc.tenant_upstreams):
        r = _add_route(
            routes,
            svc,
            name=tenant_cluster_name(svc.service_name, tenant),
            cluster_name=tenant_cluster_name(svc.service_name, tenant),
            authz=policy,
            with_cache_filter=with_cache,
        )
        header = r.match.headers.add(name=TENANT_UPSTREAM_HEADER)
        header.string_match.exact = tenant
    _add_route(
        routes,
        svc,
        name=svc.service_name,
        cluster_name=svc.service_name,
        authz=policy,
        with_cache_filter=with_cache,
    )


def _sorted_for_routing(services: Sequence[Service]) -> list[Service]:
    # Longest prefix first; the name breaks ties so the order never depends on file order.
    return sorted(services, key=lambda s: (-len(s.route_prefix), s.route_prefix, s.service_name))


def route_configuration(
    catalog: Catalog, authz: AuthzOptions = DEFAULT_AUTHZ
) -> route_pb2.RouteConfiguration:
    with_cache = needs_cache_filter(catalog)
    # Envoy rejects (NACKs) routes naming a cluster it does not have instead of answering 503.
    out = route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME, validate_clusters=wrappers_pb2.BoolValue(value=True)
    )
    host = out.virtual_hosts.add(name="services", domains=["*"])
    for svc in _sorted_for_routing(catalog.services):
        add_service_routes(host.routes, catalog, svc, with_cache=with_cache, authz=authz)
    return out


def needs_cache_filter(catalog: Catalog) -> bool:
    return any(s.cacheable for s in catalog.services)


def needs_body_limit(catalog: Catalog) -> bool:
    return any(s.max_request_body_bytes is not None for s in catalog.services)


def body_limit(max_bytes: int) -> any_pb2.Any:
    """The buffer filter (off by default in the chain) on for a route: 413 above `max_bytes`.
    It runs after ext_authz, so only an allowed request's body is read."""
    per_route = buffer_pb2.BufferPerRoute()
    per_route.buffer.max_request_bytes.value = max_bytes
    # Wrapped in a FilterConfig: that is what turns a filter that is off by default on.
    return pack(route_components_pb2.FilterConfig(config=pack(per_route)))


AUTHZ_DISABLED = pack(ext_authz_pb2.ExtAuthzPerRoute(disabled=True))

# Strict paths. A lenient upstream reads some spellings of a path as another path: matrix
# parameters (`/admin;x`, Tomcat and Spring), trailing dots or spaces (`/admin.`, `/admin%20`,
# Windows and suffix-pattern matching), case (`/ADMIN`, case-insensitive servers), and encoded
# or double-encoded or overlong forms of those characters (`%2e`, `%252e`, `%c0%ae`). When a
# service owns a path with a longer service under it (`/orders` and `/orders/admin`), such a
# spelling of the longer path would reach the shorter service's upstream, which might serve the
# longer one's content under the shorter one's rights. Envoy's `normalize_path` and
# `merge_slashes` (on) fix dot segments and slashes but none of these, so a strict service
# refuses them (400) with one regex route ahead of its own: any path whose segments, compared
# without case, are the longer path's, each followed by nothing, '/', or one of `.`, `;`, a
# space or a `%` (every encoded or double-encoded trick starts with one). This follows Istio's
# guidance on path normalization: normalize at the edge, and make sure what authorization sees
# is what the upstream acts on, or refuse the request.
_LOOKALIKE_TAIL = r"(?:[.;\s%][^/]*)?"


def _lookalike_path(suffix: str) -> str:
    """A regex for `suffix` (segments under the shorter service) and its look-alikes."""
    segments = [re.escape(segment) + _LOOKALIKE_TAIL for segment in suffix.strip("/").split("/")]
    return "/".join(segments) + "(?:/.*)?"


def lookalike_regexes(svc: Service, services: Sequence[Service]) -> list[str]:
    """One regex (RE2, case-insensitive) per longer base path under `svc`, matching its
    look-alikes; none when `svc` is not strict. The longer services' own routes come first, so
    their exact paths never reach these. (RE2 sizes grow with the path: the bootstrap raises
    Envoy's `re2.max_program_size.error_level`.)"""
    if not svc.strict_paths:
        return []
    base = svc.route_prefix.rstrip("/")
    under = sorted(
        {
            other.route_prefix[len(base) :]
            for other in services
            if other.route_prefix.startswith(base + "/") and other.route_prefix != svc.route_prefix
        }
    )
    return [f"(?i){re.escape(base)}/{_lookalike_path(suffix)}" for suffix in under]
