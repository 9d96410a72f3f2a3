"""Tokens shaped as Keycloak, Auth0 and Okta issue them, signed with keys made by the test,
through a real Envoy with `SIDECAR_IDP` set: roles are found where each provider keeps them
(nested, permission-style, group names with commas), the catalog names them as the provider
spells them, and the upstream gets `x-user-roles` it can split unambiguously.

Each on both engines: `ext_authz`, and `native` (the preset's claim paths compiled into
Envoy's jwt_authn, RBAC and Lua identity step, with no ext_authz running at all)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from sidecar_shared.contract import decode_roles
from tests.support import engines, http, idp_tokens, stack
from tests.support.catalogs import write_catalog
from tests.support.keys import rsa_key, write_jwks

ROLES = {
    "orders-admin": ["orders:*"],
    "read:orders": ["orders:read"],
    "write:orders": ["orders:write"],
    "Sales, EMEA": ["orders:read"],
}


@dataclass
class Rig:
    envoy: stack.Envoy
    claims: dict[str, Any]  # of the provider's token shape
    token: str  # those claims, signed
    engine: str  # what the xDS server was told to decide with

    def call(self, method: str, token: str, extra: dict[str, str] | None = None) -> http.Response:
        headers = {"authorization": f"Bearer {token}", **(extra or {})}
        return http.http(method, self.envoy.url + "/orders/7", headers)

    def decided_by(self) -> str:
        """Which engine answered the calls so far, by Envoy's counters."""
        native = engines.counters(self.envoy, "rbac")
        authz = engines.counters(self.envoy, "ext_authz")
        assert bool(native) != bool(authz), (native, authz)
        return "native" if native else "ext_authz"


@pytest.fixture(params=["ext_authz", "native"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(
    tmp_path: Path, echo: Callable[[str], EchoServer], engine: str
) -> Iterator[Callable[..., Rig]]:
    """A stack whose servers use the preset `idp` (and `env`), deciding by `engine`, and a
    token of that provider's shape. No ext_authz runs on `native`."""
    upstream = echo("orders")
    service = {"service_name": "orders", "base_path": "/orders"}
    catalog = write_catalog(
        tmp_path, [{**service, "internal_url": f"http://127.0.0.1:{upstream.port}"}], ROLES
    )
    jwks = write_jwks(tmp_path / "jwks.json", rsa_key())
    procs: list[stack.Proc] = []

    def make(idp: str, env: Mapping[str, str] | None = None) -> Rig:
        claims = idp_tokens.SHAPES[idp]()
        audience = claims["aud"][0] if isinstance(claims["aud"], list) else claims["aud"]
        keys = {
            "SIDECAR_JWT_SECRET": "",
            "SIDECAR_JWKS": str(jwks),
            "SIDECAR_IDP": idp,
            "SIDECAR_JWT_ISSUER": claims["iss"],
            "SIDECAR_JWT_AUDIENCE": audience,
            **(env or {}),
        }
        xds = stack.start_xds(catalog, tmp_path, env={**keys, "SIDECAR_DECISION": engine})
        procs.append(xds.proc)
        authz = None
        if engine != "native":
            authz = stack.start_authz(tmp_path, env=keys)
            procs.append(authz.proc)
        envoy = stack.start_envoy(xds, tmp_path, authz=authz)
        procs.append(envoy.proc)
        stack.wait_for_route(envoy, "/orders/1")
        return Rig(envoy, claims, idp_tokens.sign(claims, rsa_key()), engine)

    yield make
    for p in reversed(procs):
        p.stop()


def test_keycloak_realm_roles_grant_access(start: Callable[..., Rig]) -> None:
    rig = start("keycloak")
    claims = rig.claims
    resp = rig.call("DELETE", rig.token, {"x-user-roles": "spoofed"})
    assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    assert seen["x-user-id"] == claims["sub"]
    assert decode_roles(seen["x-user-roles"]) == claims["realm_access"]["roles"]
    # Without the realm role, client roles alone (not configured) grant nothing.
    del claims["realm_access"]
    assert rig.call("GET", idp_tokens.sign(claims, rsa_key())).status == 403
    assert rig.decided_by() == rig.engine


def test_auth0_permissions_with_colons_are_roles(start: Callable[..., Rig]) -> None:
    rig = start("auth0")
    got = rig.call("POST", rig.token)
    assert got.status == 200, got.body
    seen = got.json()["headers"]
    assert seen["x-user-roles"] == "read:orders,write:orders"
    assert seen["x-tenant-id"] == rig.claims["org_id"]
    assert rig.call("GET", rig.token).status == 200
    assert rig.call("DELETE", rig.token).status == 403
    assert rig.decided_by() == rig.engine


def test_okta_groups_with_commas_and_spaces_reach_the_upstream_unambiguously(
    start: Callable[..., Rig],
) -> None:
    rig = start("okta")
    got = rig.call("GET", rig.token)
    assert got.status == 200, got.body
    header = got.json()["headers"]["x-user-roles"]
    assert header == "Everyone,Sales%2C%20EMEA,Orders%20Admins"
    assert decode_roles(header) == ["Everyone", "Sales, EMEA", "Orders Admins"]
    assert rig.call("POST", rig.token).status == 403
    assert rig.decided_by() == rig.engine


@pytest.mark.parametrize("engine", ["ext_authz", "auto"])
def test_keycloak_client_roles_beside_realm_roles_keep_auto_on_ext_authz(
    start: Callable[..., Rig],
) -> None:
    """Realm and client roles together (the preset's `,resource_access.<client>.roles`):
    several claim paths, which native cannot read, so `auto` keeps ext_authz and answers as
    the ext_authz engine does."""
    roles = "realm_access.roles,resource_access.orders-api.roles"
    rig = start("keycloak", {"SIDECAR_CLAIM_ROLES": roles})
    got = rig.call("DELETE", rig.token)
    assert got.status == 200, got.body
    realm = rig.claims["realm_access"]["roles"]
    assert decode_roles(got.json()["headers"]["x-user-roles"]) == [*realm, "orders:refund"]
    del rig.claims["realm_access"]  # a client role the catalog does not name
    assert rig.call("GET", idp_tokens.sign(rig.claims, rsa_key())).status == 403
    assert rig.decided_by() == "ext_authz"


@pytest.mark.parametrize("engine", ["ext_authz", "native", "auto"])
def test_google_tokens_carry_no_roles_and_every_engine_says_so(start: Callable[..., Rig]) -> None:
    """Google's ID tokens have no roles claim: a service that requires a role is a 403 for
    every one of them, on every engine (native and auto compile it: an RBAC principal that
    never matches; before, Envoy refused those routes and served none)."""
    rig = start("google")
    assert rig.call("GET", rig.token).status == 403
    assert rig.decided_by() == ("ext_authz" if rig.engine == "ext_authz" else "native")
