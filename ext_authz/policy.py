"""The pure authorization decision: may this verified caller do this method on the route's
service? The route's policy comes from the contract (`sidecar_shared.contract`). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar_shared.contract import ACTION_OF_METHOD, RoutePolicy


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
