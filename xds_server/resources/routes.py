"""The route configuration: one route per service (and per tenant upstream), longest base path
first, each with its timeout, retries and ext_authz policy.

Routing contract: a service owns its `base_path` and everything below it (`/orders` matches
`/orders`, `/orders/` and `/orders/42`, never `/ordersx`). When one service's path is a prefix
of another's, the longer path wins. Within a service, each endpoint has its own route ahead of
the service's, most specific first (`catalog.endpoint_rank`). Paths reach the upstream
unchanged.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from google.protobuf import any_pb2, wrappers_pb2

from sidecar_shared.contract import (
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
)
from sidecar_shared.contract import encode as encode_policy
from xds_server.catalog import Catalog, Service, ServiceEndpoint, endpoints_in_order
from xds_server.engines import choose
from xds_server.resources import native
from xds_server.resources.authz import per_route as authz_per_route
from xds_server.resources.clusters import tenant_cluster_name, version_cluster_name
from xds_server.resources.common import (
    AUTHZ_FILTER,
    BUFFER_FILTER,
    FILTER_DISABLED,
    METHOD_OVERRIDE_FILTER,
    ROUTE_CONFIG_NAME,
    AuthzOptions,
    pack,
    set_ms,
)
from xds_server.resources.http_cache import set_route_cache
from xds_server.resources.retries import set_retry_policy
from xds_server.route_policy import compile_policy

DEFAULT_AUTHZ = AuthzOptions()


RouteAuth = tuple[tuple[str, any_pb2.Any], ...]  # per-filter configs (filter name, config)


def _authz_per_route(
    catalog: Catalog, svc: Service, authz: AuthzOptions, endpoint: ServiceEndpoint | None = None
) -> RouteAuth:
    """The service's (or its `endpoint`'s) policy for ext_authz, or ext_authz off for public
    routes with no limit, or the native filters' configs (`xds_server.engines`)."""
    seen = svc if endpoint is None else svc.for_endpoint(endpoint)
    if seen.public and seen.rate_limit is None:
        return ((AUTHZ_FILTER, AUTHZ_DISABLED),)
    compiled = compile_policy(catalog, svc, endpoint)
    if authz.engines.decision != "ext_authz" and choose(compiled, authz.engines).engine == "native":
        return tuple(native.per_route(authz.engines.keys, compiled))
    policy = encode_policy(compiled)
    return ((AUTHZ_FILTER, pack(authz_per_route(authz, svc.service_name, policy))),)


URI_TEMPLATE_MATCHER = "envoy.path.match.uri_template"
# What one `{variable}` of a URI template matches in Envoy (one segment, at least a character).
_TEMPLATE_SEGMENT = r"[a-zA-Z0-9._~%!$&'()+,;:@=-]+"


def _match_endpoint(match: route_components_pb2.RouteMatch, ep: ServiceEndpoint) -> None:
    """Match `ep`'s path (by its kind) and, when it names them, its methods."""
    if ep.match == "exact":
        match.path = ep.path
    elif ep.match == "template":
        policy = match.path_match_policy
        policy.name = URI_TEMPLATE_MATCHER
        policy.typed_config.Pack(
            uri_template_match_pb2.UriTemplateMatchConfig(path_template=ep.path)
        )
    elif ep.path == "/":
        match.prefix = "/"
    else:
        match.path_separated_prefix = ep.path
    if ep.methods:
        method = match.headers.add(name=":method")
        if len(ep.methods) == 1:
            method.string_match.exact = ep.methods[0]
        else:
            method.string_match.safe_regex.regex = f"^(?:{'|'.join(ep.methods)})$"


def _match_base_path(
    match: route_components_pb2.RouteMatch, svc: Service, prefix: str | None = None
) -> None:
    """Match `prefix` (the service's base path by default) and everything below it."""
    prefix = prefix or svc.route_prefix
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
    authz: RouteAuth,
    with_cache_filter: bool,
    header: tuple[str, str] | None = None,
    prefix: str | None = None,
    endpoint: ServiceEndpoint | None = None,
) -> None:
    """Append the route for `prefix` (the service's by default), or `endpoint`, and `header`
    with this exact value."""
    out: route_components_pb2.Route = routes.add(name=name)
    if endpoint is None:
        _match_base_path(out.match, svc, prefix)
    else:
        _match_endpoint(out.match, endpoint)
    if header is not None:
        match = out.match.headers.add(name=header[0])
        match.string_match.exact = header[1]
    out.route.cluster = cluster_name
    set_ms(out.route.timeout, svc.timeout_ms)
    if svc.protocol == "grpc":
        # A client's grpc-timeout is honoured up to the service's timeout; a call without one
        # gets the service's timeout. Either way it ends DEADLINE_EXCEEDED. (A route with a
        # max_stream_duration gets no router timeout from Envoy: the stream duration bounds
        # every request on it, gRPC or not.)
        duration = out.route.max_stream_duration
        set_ms(duration.max_stream_duration, svc.timeout_ms)
        set_ms(duration.grpc_timeout_header_max, svc.timeout_ms)
    if svc.websocket:
        out.route.upgrade_configs.add(upgrade_type="websocket")
    for filter_name, config in authz:
        out.typed_per_filter_config[filter_name].CopyFrom(config)
    if with_cache_filter:
        set_route_cache(out, svc.cacheable)
    if svc.method_override:
        out.typed_per_filter_config[METHOD_OVERRIDE_FILTER].CopyFrom(FILTER_DISABLED)
    if svc.max_request_body_bytes is not None:
        out.typed_per_filter_config[BUFFER_FILTER].CopyFrom(body_limit(svc.max_request_body_bytes))
    if svc.public:
        # No verified identity on a public route: a client's tenant header goes too. (The
        # router applies this after ext_authz, which sets nothing here.)
        out.request_headers_to_remove.append(TENANT_HEADER)
    rp = svc.retry_policy
    if rp is not None and rp.max_retries > 0:
        set_retry_policy(rp, out, svc.timeout_ms)
    if not svc.cacheable:
        native.merge_retry(out)


def add_service_routes(
    routes: Any,
    catalog: Catalog,
    svc: Service,
    *,
    with_cache: bool,
    under: Sequence[str],
    authz: AuthzOptions = DEFAULT_AUTHZ,
) -> None:
    """Append a service's routes to a repeated `routes` field: a strict service with longer
    base paths under it first gets a route refusing their look-alikes (and, with a body limit,
    one refusing a declared length above it); then per API version one for its path and one for
    its header; per endpoint (most specific first) one per tenant with its own upstream and one
    for everyone else, then (strict) one refusing the endpoints' look-alikes; one per tenant
    with its own upstream (matched on the header ext_authz sets), then the service's own."""
    policy = _authz_per_route(catalog, svc, authz)
    for i, guard in enumerate(lookalike_regexes(svc, under)):
        refuse: route_components_pb2.Route = routes.add(name=f"{svc.service_name}.lookalike.{i}")
        refuse.match.safe_regex.regex = guard
        refuse.direct_response.status = 400
        refuse.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(AUTHZ_DISABLED)
    if svc.max_request_body_bytes is not None:
        # A declared length above the limit is refused before anything is read or checked
        # (one within it streams through: the buffer filter skips it); a chunked body meets
        # the buffer filter once ext_authz allowed it.
        too_large: route_components_pb2.Route = routes.add(name=f"{svc.service_name}.too_large")
        _match_base_path(too_large.match, svc)
        length = too_large.match.headers.add(name="content-length")
        length.range_match.start = svc.max_request_body_bytes + 1
        length.range_match.end = 2**63 - 1
        too_large.direct_response.status = 413
        too_large.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(AUTHZ_DISABLED)
    for ep in endpoints_in_order(svc.endpoints):
        ep_policy = _authz_per_route(catalog, svc, authz, ep)
        seen = svc.for_endpoint(ep)
        for tenant in sorted(svc.tenant_upstreams):
            _add_route(
                routes,
                seen,
                name=f"{svc.service_name}.{ep.name}.{tenant}",
                cluster_name=tenant_cluster_name(svc.service_name, tenant),
                authz=ep_policy,
                with_cache_filter=with_cache,
                header=(TENANT_UPSTREAM_HEADER, tenant),
                endpoint=ep,
            )
        _add_route(
            routes,
            seen,
            name=f"{svc.service_name}.{ep.name}",
            cluster_name=svc.service_name,
            authz=ep_policy,
            with_cache_filter=with_cache,
            endpoint=ep,
        )
    for i, (guard, exact) in enumerate(endpoint_lookalikes(svc)):
        refuse = routes.add(name=f"{svc.service_name}.endpoint_lookalike.{i}")
        refuse.match.safe_regex.regex = guard
        # Not the endpoint's own spelling (another method than the endpoint's, say): that one
        # goes on to the routes below.
        own = refuse.match.headers.add(name=":path", invert_match=True)
        own.string_match.safe_regex.regex = exact
        refuse.direct_response.status = 400
        refuse.typed_per_filter_config[AUTHZ_FILTER].CopyFrom(AUTHZ_DISABLED)
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
            authz=policy,
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
            authz=policy,
            with_cache_filter=with_cache,
            header=(TENANT_UPSTREAM_HEADER, tenant),
        )
    _add_route(
        routes,
        svc,
        name=svc.service_name,
        cluster_name=svc.service_name,
        authz=policy,
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


def route_configuration(
    catalog: Catalog, authz: AuthzOptions = DEFAULT_AUTHZ
) -> route_pb2.RouteConfiguration:
    with_cache = needs_cache_filter(catalog)
    # Envoy rejects (NACKs) routes naming a cluster it does not have instead of answering 503.
    out = route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME, validate_clusters=wrappers_pb2.BoolValue(value=True)
    )
    host = out.virtual_hosts.add(name="services", domains=["*"])
    prefixes = sorted_prefixes(catalog.services)
    for svc in _sorted_for_routing(catalog.services):
        under = paths_under(prefixes, svc)
        add_service_routes(
            host.routes, catalog, svc, with_cache=with_cache, under=under, authz=authz
        )
    return out


def needs_cache_filter(catalog: Catalog) -> bool:
    return any(s.cacheable or any(e.cacheable for e in s.endpoints) for s in catalog.services)


def needs_body_limit(catalog: Catalog) -> bool:
    return any(s.max_request_body_bytes is not None for s in catalog.services)


def body_limit(max_bytes: int) -> any_pb2.Any:
    """The buffer filter (off by default in the chain) on for a route: 413 above `max_bytes`.
    It runs after ext_authz, so only an allowed request's body is read, and only for a body
    without a declared length (the chain skips it for the others: `listener._body_limit`)."""
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


def sorted_prefixes(services: Sequence[Service]) -> list[str]:
    """Every service's route prefix, sorted (for `paths_under`)."""
    return sorted({s.route_prefix for s in services})


def paths_under(prefixes: Sequence[str], svc: Service) -> tuple[str, ...]:
    """The longer base paths under `svc`'s, as suffixes (`/admin` under `/orders`): a service's
    routes depend on these and on nothing else of other services. `prefixes` is
    `sorted_prefixes(...)`; strings starting with `base/` sit together in sorted order, between
    `base/` and `base0` ('0' follows '/'), so this costs two bisections."""
    base = svc.route_prefix.rstrip("/")
    lo = bisect.bisect_left(prefixes, base + "/")
    hi = bisect.bisect_left(prefixes, base + "0")
    return tuple(p[len(base) :] for p in prefixes[lo:hi] if p != svc.route_prefix)


def lookalike_regexes(svc: Service, under: Sequence[str]) -> list[str]:
    """One regex (RE2, case-insensitive) per longer base path under `svc`, matching its
    look-alikes; none when `svc` is not strict. The longer services' own routes come first, so
    their exact paths never reach these. (RE2 sizes grow with the path: the bootstrap raises
    Envoy's `re2.max_program_size.error_level`.)"""
    if not svc.strict_paths:
        return []
    base = svc.route_prefix.rstrip("/")
    return [f"(?i){re.escape(base)}/{_lookalike_path(suffix)}" for suffix in under]


def endpoint_lookalikes(svc: Service) -> list[tuple[str, str]]:
    """For a strict service, per endpoint whose path goes below the base path: (a regex, RE2,
    case-insensitive, for the path and its look-alikes; a regex for the `:path` header of the
    spellings the endpoint's route matches, query included). A look-alike of an endpoint would
    otherwise reach the service's route, and its policy, while a lenient upstream serves it as
    the endpoint. An exact or template endpoint's look-alikes include its path with a trailing
    '/'; a prefix endpoint's, everything below a look-alike."""
    if not svc.strict_paths:
        return []
    base = svc.route_prefix.rstrip("/")
    depth = len([s for s in base.split("/") if s])
    out = []
    seen: set[tuple[str, str]] = set()
    for ep in endpoints_in_order(svc.endpoints):
        below = ep.segments[depth:]
        if not below or (ep.path, ep.match) in seen:
            continue
        seen.add((ep.path, ep.match))
        guard, exact = [], []
        for segment in below:
            if ep.is_variable(segment):
                guard.append("[^/]+")
                exact.append(_TEMPLATE_SEGMENT)
            else:
                guard.append(re.escape(segment) + _LOOKALIKE_TAIL)
                exact.append(re.escape(segment))
        tail = "(?:/.*)?" if ep.match == "prefix" else "/?"
        own_tail = "(?:/[^?]*)?" if ep.match == "prefix" else ""
        out.append(
            (
                f"(?i){re.escape(base)}/{'/'.join(guard)}{tail}",
                f"^{re.escape(base)}/{'/'.join(exact)}{own_tail}(?:\\?.*)?$",
            )
        )
    return out
