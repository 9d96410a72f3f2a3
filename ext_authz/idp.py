"""Identity-provider presets (`SIDECAR_IDP`): where each provider's tokens keep the user, the
roles and the tenant, and the other claims its access tokens usually carry (so that
`sidecar token --idp NAME` mints a token of that shape).

A claim setting given explicitly (`SIDECAR_CLAIM_USER`, `_ROLES`, `_TENANT`) wins over the
preset's. An empty `roles` or `tenant` means the provider has no such claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = ["DEFAULT", "PRESETS", "Preset", "preset"]


@dataclass(frozen=True)
class Preset:
    user: str
    roles: str
    tenant: str
    # Claims a real token of this provider carries besides the identity (for minting only).
    usual_claims: Mapping[str, Any] = field(default_factory=dict)


DEFAULT: Final = Preset(user="sub", roles="roles", tenant="tenant_id")

PRESETS: Final[Mapping[str, Preset]] = MappingProxyType(
    {
        # Realm roles; add client roles with `,resource_access.<client-id>.roles`.
        "keycloak": Preset(
            user="sub",
            roles="realm_access.roles",
            tenant="tenant_id",
            usual_claims={
                "typ": "Bearer",
                "azp": "sidecar",
                "scope": "openid profile email",
                "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            },
        ),
        # RBAC with "Add Permissions in the Access Token": `permissions`; Organizations: `org_id`.
        "auth0": Preset(
            user="sub",
            roles="permissions",
            tenant="org_id",
            usual_claims={"azp": "sidecar-client", "scope": "openid profile email"},
        ),
        # A `groups` claim added to the authorization server's access tokens.
        "okta": Preset(
            user="sub",
            roles="groups",
            tenant="tenant_id",
            usual_claims={"ver": 1, "cid": "0oa1sidecar", "scp": ["openid", "profile"]},
        ),
        # Microsoft Entra ID v2 access tokens: app roles, tenant id, object id.
        "azure": Preset(
            user="oid",
            roles="roles",
            tenant="tid",
            usual_claims={"ver": "2.0", "azp": "sidecar-client", "scp": "access_as_user"},
        ),
        # Google ID tokens: the e-mail address and the Workspace domain; Google sends no roles.
        "google": Preset(
            user="email",
            roles="",
            tenant="hd",
            usual_claims={
                "email_verified": True,
                "azp": "sidecar.apps.googleusercontent.com",
                "sub": "110169484474386276334",
            },
        ),
    }
)


def preset(name: str | None) -> Preset:
    """The preset called `name` (None: the built-in names); raises ValueError listing them."""
    if name is None or name == "":
        return DEFAULT
    found = PRESETS.get(name.lower())
    if found is None:
        raise ValueError(f"SIDECAR_IDP={name!r} is not one of {', '.join(PRESETS)}")
    return found
