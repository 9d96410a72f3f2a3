"""Compile each service's authorization policy from the catalog (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar_shared.contract import ACTIONS, Limit, RoutePolicy, parse_permission
from xds_server.catalog import Catalog, Service


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


def compile_policy(catalog: Catalog, svc: Service) -> RoutePolicy:
    rl = svc.rate_limit
    return RoutePolicy(
        service=svc.service_name,
        public=svc.public,
        rbac_required=svc.rbac_required,
        allowed_roles=allowed_roles(catalog.roles, svc.service_name),
        tenant_scope=svc.tenant_scope,
        rate_limit=Limit(rl.limit, rl.window_seconds, rl.burst) if rl else None,
        tenant_upstreams=frozenset(svc.tenant_upstreams),
        method_override=svc.method_override,
    )
