"""A route's policy, its wire format, and the pure authorization decision.

The xDS server compiles each service's policy from the catalog and attaches it to the route in
`context_extensions` (`POLICY_KEY` holds `encode(policy)`); Envoy sends it with every check.
ext_authz decodes it (once per distinct string) and decides with `authorize`. Nothing here does
I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ext_authz.ratelimit.base import Limit

POLICY_KEY = "policy"
SERVICE_KEY = "service"

# Headers ext_authz sets on allowed requests; a client's copies never reach an upstream.
USER_HEADER = "x-user-id"
ROLES_HEADER = "x-user-roles"
TENANT_HEADER = "x-tenant-id"
REQUEST_ID_HEADER = "x-request-id"
# Set by ext_authz to route a tenant to its own upstream; never trusted from a client.
TENANT_UPSTREAM_HEADER = "x-tenant-upstream"
IDENTITY_HEADERS = (USER_HEADER, ROLES_HEADER, TENANT_HEADER, TENANT_UPSTREAM_HEADER)

Action = Literal["read", "write", "delete"]

ACTION_OF_METHOD: Mapping[str, Action] = {
    "GET": "read",
    "HEAD": "read",
    "OPTIONS": "read",
    "POST": "write",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "delete",
}


@dataclass(frozen=True)
class RoutePolicy:
    service: str
    public: bool = False
    rbac_required: bool = True
    # action → the roles that may perform it on this service
    allowed_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    tenant_scope: Literal["global", "tenant"] = "global"
    rate_limit: Limit | None = None
    tenant_upstreams: frozenset[str] = frozenset()


class PolicyError(ValueError):
    """The route's policy is missing or unreadable (a control-plane bug: fail closed)."""


def encode(policy: RoutePolicy) -> str:
    """Compact, deterministic JSON (the same policy always gives the same string)."""
    data: dict[str, Any] = {
        "v": 1,
        "service": policy.service,
        "public": policy.public,
        "rbac": policy.rbac_required,
        "roles": {a: sorted(r) for a, r in sorted(policy.allowed_roles.items())},
        "tenant_scope": policy.tenant_scope,
    }
    if policy.rate_limit is not None:
        rl = policy.rate_limit
        data["rate_limit"] = [rl.limit, rl.window_s, rl.burst]
    if policy.tenant_upstreams:
        data["tenant_upstreams"] = sorted(policy.tenant_upstreams)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> RoutePolicy:
    try:
        data = json.loads(text)
        if data.get("v") != 1:
            raise PolicyError(f"unknown policy version {data.get('v')!r}")
        rl = data.get("rate_limit")
        scope = data["tenant_scope"]
        if scope not in ("global", "tenant"):
            raise PolicyError(f"unknown tenant_scope {scope!r}")
        return RoutePolicy(
            service=str(data["service"]),
            public=bool(data["public"]),
            rbac_required=bool(data["rbac"]),
            allowed_roles={str(a): frozenset(map(str, r)) for a, r in data["roles"].items()},
            tenant_scope=scope,
            rate_limit=Limit(int(rl[0]), int(rl[1]), int(rl[2])) if rl else None,
            tenant_upstreams=frozenset(map(str, data.get("tenant_upstreams", ()))),
        )
    except PolicyError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise PolicyError(f"unreadable route policy: {err}") from None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # short code for audit and metrics ("ok", "role_not_allowed", ...)
    message: str  # a sentence safe to show the client


ALLOWED = Verdict(True, "ok", "allowed")


def authorize(
    policy: RoutePolicy,
    method: str,
    roles: tuple[str, ...],
    token_tenant: str | None,
    client_tenant: str | None,
) -> Verdict:
    """May this verified caller do `method` on the policy's service? (403 when not.)"""
    if policy.rbac_required:
        action = ACTION_OF_METHOD.get(method.upper())
        if action is None:
            return Verdict(False, "method_not_allowed", f"method {method} is not allowed")
        allowed = policy.allowed_roles.get(action, frozenset())
        if not any(r in allowed for r in roles):
            return Verdict(
                False,
                "role_not_allowed",
                f"no role of the caller may {action} on {policy.service}",
            )
    if policy.tenant_scope == "tenant" and token_tenant is None:
        return Verdict(False, "tenant_required", f"{policy.service} needs a tenant in the token")
    if client_tenant is not None and client_tenant != (token_tenant or ""):
        return Verdict(False, "tenant_mismatch", "x-tenant-id does not match the token's tenant")
    return ALLOWED
