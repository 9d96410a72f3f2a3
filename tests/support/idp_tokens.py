"""Access and ID tokens in the shapes identity providers really issue (claim for claim, from
each provider's documentation and from tokens seen in the wild), signed with the test keys.

These are written out by hand, not made by `sidecar token --idp`, so they check the presets
against the providers rather than against themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

from tests.support.keys import KeyPair

Claims = dict[str, Any]


def _times(now: float | None, ttl_s: int = 300) -> Claims:
    issued = int(time.time() if now is None else now)
    return {"iat": issued, "exp": issued + ttl_s}


def keycloak(now: float | None = None) -> Claims:
    """Keycloak 24 access token: realm roles, client roles per client, scope string."""
    return {
        **_times(now),
        "jti": "4b1c5f5e-2f4e-4c53-9d4b-4f2b1f7f0d1a",
        "iss": "https://kc.example.com/realms/acme",
        "aud": ["orders-api", "account"],
        "sub": "5f0c1a2e-7a43-4f0e-9a57-2c1f3c1b8d9e",
        "typ": "Bearer",
        "azp": "orders-web",
        "sid": "a3c4e1f0-1d0c-4a8b-9d5e-0f6a7b8c9d0e",
        "acr": "1",
        "allowed-origins": ["https://app.example.com"],
        "realm_access": {
            "roles": ["offline_access", "default-roles-acme", "uma_authorization", "orders-admin"]
        },
        "resource_access": {
            "orders-api": {"roles": ["orders:refund"]},
            "account": {"roles": ["manage-account", "manage-account-links", "view-profile"]},
        },
        "scope": "openid email profile",
        "email_verified": True,
        "name": "Alice Doe",
        "preferred_username": "alice",
        "given_name": "Alice",
        "family_name": "Doe",
        "email": "alice@example.com",
    }


def auth0(now: float | None = None) -> Claims:
    """Auth0 access token with RBAC permissions, an organization and a namespaced roles claim."""
    return {
        **_times(now),
        "iss": "https://acme.eu.auth0.com/",
        "sub": "auth0|64f1c0ffee0123456789abcd",
        "aud": ["https://orders.example.com", "https://acme.eu.auth0.com/userinfo"],
        "azp": "Xy12AbCdEfGhIjKlMnOpQrStUv",
        "scope": "openid profile email read:orders",
        "org_id": "org_9ybsU1dN2dKfDkBi",
        "permissions": ["read:orders", "write:orders"],
        "https://example.com/roles": ["Order Manager"],
    }


def okta(now: float | None = None) -> Claims:
    """Okta custom authorization server access token with a groups claim."""
    return {
        **_times(now),
        "ver": 1,
        "jti": "AT.0mP4JKAZX1iACIT4vbEDF7LpvDVjxypPMf0D7uX39RE",
        "iss": "https://acme.okta.com/oauth2/default",
        "aud": "api://default",
        "cid": "0oa1b2c3d4e5f6g7h8i9",
        "uid": "00u1a2b3c4d5e6f7g8h9",
        "scp": ["openid", "profile", "orders.read"],
        "auth_time": int(time.time() if now is None else now) - 60,
        "sub": "alice@example.com",
        "groups": ["Everyone", "Sales, EMEA", "Orders Admins"],
    }


def azure(now: float | None = None) -> Claims:
    """Microsoft Entra ID v2.0 access token for a web API with app roles."""
    return {
        **_times(now),
        "aud": "api://6e74172b-be56-4843-9ff4-e66a39bb12e3",
        "iss": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
        "nbf": int(time.time() if now is None else now),
        "aio": "AWQAm/8TAAAAkB1/5T+AttF0wY8p0Xk3s9S5hU0NLHMbF2JqkmcRO6sE",
        "azp": "6e74172b-be56-4843-9ff4-e66a39bb12e3",
        "azpacr": "0",
        "name": "Alice Doe",
        "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474",
        "preferred_username": "alice@contoso.com",
        "rh": "0.AXEAv4j5cvGGr0GRqy180BHbR0YjNVJQIWVFqnC7gvoSbr1xAAA.",
        "roles": ["Orders.Read", "Orders.Write"],
        "scp": "access_as_user",
        "sub": "HRjVv5D1y1JmKhgmDEjVG3gbHKYl4r1zUs0Kr1YaX2M",
        "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "uti": "fqiBqXLPj0eQa82S-IYFAA",
        "ver": "2.0",
    }


def google(now: float | None = None) -> Claims:
    """Google ID token for a Workspace user."""
    return {
        **_times(now),
        "iss": "https://accounts.google.com",
        "azp": "1234987819200.apps.googleusercontent.com",
        "aud": "1234987819200.apps.googleusercontent.com",
        "sub": "10769150350006150715113082367",
        "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q",
        "hd": "example.com",
        "email": "jsmith@example.com",
        "email_verified": True,
        "nonce": "0394852-3190485-2490358",
    }


SHAPES: dict[str, Callable[..., Claims]] = {
    "keycloak": keycloak,
    "auth0": auth0,
    "okta": okta,
    "azure": azure,
    "google": google,
}


def sign(claims: Claims, key: KeyPair, alg: str = "RS256") -> str:
    return jwt.encode(claims, key.private, alg, headers={"kid": key.kid, "typ": "JWT"})
