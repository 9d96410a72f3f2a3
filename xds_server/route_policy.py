"""Compile each service's authorization policy from the catalog (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar_shared.contract import ACTIONS, Limit, RoutePolicy, parse_permission
from xds_server.catalog import Catalog, Service, ServiceEndpoint


def allowed_roles(roles: Mapping[str, list[str]], service: str) -> dict[str, frozenset[str]]:
    """action → the roles whose permissions grant `<service>:<action>`."""
    out: dict[str, set[str]] = {action: set() for action in ACTIONS}
    for role, permissions in roles.items():
        for perm in permissions:
            svc, action = parse_permission(perm)  # the catalog holds only valid permissions
            if svc not in ("*", service):
                continue
            for name, granted in out.items():
                if action in ("*", name):
                    granted.add(role)
    return {action: frozenset(r) for action, r in out.items()}


def endpoint_roles(
    service_roles: Mapping[str, frozenset[str]], ep: ServiceEndpoint
) -> dict[str, frozenset[str]]:
    """action → the roles allowed on `ep`: its `roles` for every action, or the roles allowed
    `ep.action` on the service for every action, or the service's."""
    if ep.roles is not None:
        return {action: frozenset(ep.roles) for action in ACTIONS}
    if ep.action is not None:
        return {action: service_roles.get(ep.action, frozenset()) for action in ACTIONS}
    return dict(service_roles)


def compile_policy(
    catalog: Catalog, svc: Service, endpoint: ServiceEndpoint | None = None
) -> RoutePolicy:
    """The policy of `svc`'s routes, or of `endpoint`'s (one of `svc`'s). An endpoint with its
    own `rate_limit` counts under `<service>.<endpoint>`; one without shares the service's."""
    roles = allowed_roles(catalog.roles, svc.service_name)
    limit_name = None
    if endpoint is not None:
        roles = endpoint_roles(roles, endpoint)
        if endpoint.own_limit:
            limit_name = f"{svc.service_name}.{endpoint.name}"
        svc = svc.for_endpoint(endpoint)
    rl = svc.rate_limit
    return RoutePolicy(
        service=svc.service_name,
        public=svc.public,
        rbac_required=svc.rbac_required,
        allowed_roles=roles,
        tenant_scope=svc.tenant_scope,
        rate_limit=Limit(rl.limit, rl.window_seconds, rl.burst) if rl else None,
        tenant_upstreams=frozenset(svc.tenant_upstreams),
        method_override=svc.method_override,
        limit_name=limit_name,
        dry_run=svc.enforce == "dry_run",
    )
