"""Whether one snapshot lets through a request that another refuses (pure): what the fleet asks
before it rolls back, so that no NACK can undo a revocation (`fleet`).

Access is read from the route configurations Envoy is sent, route by route (by route
configuration, virtual host and route name): a route that answers by itself (`direct_response`)
lets nothing through; one with ext_authz disabled lets everything through; one with a policy
(`sidecar_shared.contract.RoutePolicy`, carried by either transport) lets through what the
policy allows; one with no ext_authz config of its own, what the listener's filter allows.

`grants_more(a, b)` is conservative: it is True unless every route of `a` that lets anything
through exists in `b` and lets through at most as much there. Two policies are compared field
by field: public, RBAC required, the roles of each action, the tenant scope, the rate limit
(more requests per second or a larger burst is more), and the tenant upstreams and method
override (any difference counts as more). Anything that cannot be read counts as more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from sidecar_shared.contract import (
    POLICY_HEADER,
    POLICY_KEY,
    PolicyError,
    RoutePolicy,
    decode,
    policy_of,
)
from xds_server import typeurls
from xds_server.resources.common import AUTHZ_FILTER
from xds_server.snapshot import Resource, Snapshot


@dataclass(frozen=True)
class Access:
    """What a route lets through: nothing (`deny`), everything (`open`), what `policy` allows,
    or (none of these) what the listener's filter allows; `unreadable` when its ext_authz
    config could not be read."""

    deny: bool = False
    open: bool = False
    policy: RoutePolicy | None = None
    unreadable: bool = False


RouteKey = tuple[str, str, str]  # route configuration, virtual host, route


def _access(route: route_components_pb2.Route) -> Access:
    if route.HasField("direct_response"):
        return Access(deny=True)
    config = route.typed_per_filter_config
    if AUTHZ_FILTER not in config:
        return Access()
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    if not config[AUTHZ_FILTER].Unpack(per_route):
        return Access(unreadable=True)
    if per_route.disabled:
        return Access(open=True)
    settings = per_route.check_settings
    text = settings.context_extensions.get(POLICY_KEY)
    if text is None:
        headers = settings.http_service.authorization_request.headers_to_add
        text = next((h.value for h in headers if h.key == POLICY_HEADER), None)
    if text is None:
        return Access()
    try:
        return Access(policy=decode(policy_of(text)))
    except PolicyError:
        return Access(unreadable=True)


def route_access(routes: Mapping[str, Resource]) -> dict[RouteKey, Access]:
    """Each route's access, from a snapshot's route configurations."""
    out: dict[RouteKey, Access] = {}
    for name, resource in routes.items():
        config = resource.message
        assert isinstance(config, route_pb2.RouteConfiguration)
        for vh in config.virtual_hosts:
            for route in vh.routes:
                out[(name, vh.name, route.name)] = _access(route)
    return out


def policy_grants_more(a: RoutePolicy, b: RoutePolicy) -> bool:
    """Whether policy `a` allows something policy `b` refuses."""
    if a.service != b.service:
        return True
    if (a.public and not b.public) or (not a.rbac_required and b.rbac_required):
        return True
    if any(
        roles - b.allowed_roles.get(action, frozenset())
        for action, roles in a.allowed_roles.items()
    ):
        return True
    if a.tenant_scope == "global" and b.tenant_scope != "global":
        return True
    if b.rate_limit is not None:
        ra, rb = a.rate_limit, b.rate_limit
        if ra is None or ra.limit * rb.window_s > rb.limit * ra.window_s or ra.burst > rb.burst:
            return True
    return a.tenant_upstreams != b.tenant_upstreams or a.method_override != b.method_override


def _more(a: Access, b: Access | None) -> bool:
    if a.deny:
        return False
    if b is None or a.unreadable or b.unreadable:
        return True
    if b.deny or (a.open and not b.open):
        return True
    if b.open:
        return False
    if a.policy is not None and b.policy is not None:
        return policy_grants_more(a.policy, b.policy)
    return a != b  # the filter's own against a policy: not comparable, so more


def grants_more(a: Snapshot, b: Snapshot) -> bool:
    """Whether snapshot `a` lets through a request that snapshot `b` refuses (see above)."""
    return more_than(b)(a)


def more_than(b: Snapshot) -> Callable[[Snapshot], bool]:
    """`grants_more(a, b)` as a function of `a`, reading `b`'s routes once, when first needed."""
    theirs: list[dict[RouteKey, Access]] = []

    def more(a: Snapshot) -> bool:
        if a.versions.get(typeurls.ROUTE) == b.versions.get(typeurls.ROUTE):
            return False
        if not theirs:
            theirs.append(route_access(b.resources.get(typeurls.ROUTE, {})))
        mine = route_access(a.resources.get(typeurls.ROUTE, {}))
        return any(_more(access, theirs[0].get(key)) for key, access in mine.items())

    return more
