"""`SIDECAR_IDP` presets read real providers' tokens; each claim setting overrides its preset;
`sidecar token --idp` mints tokens the same preset reads back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jwt
import pytest

from ext_authz import settings
from ext_authz.decision import CheckInput
from ext_authz.keys import KeySource
from ext_authz.tokens import Identity, TokenVerifier
from sidecar import cli
from sidecar_shared.contract import POLICY_KEY, ROLES_HEADER, RoutePolicy
from sidecar_shared.errors import SettingsError
from tests.support import idp_tokens
from tests.support.authorizers import make_authorizer
from tests.support.keys import rsa_key, write_jwks
from tests.support.policies import encode

NOW = 1_800_000_000.0
SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def verifier(tmp_path: Path, **env: str) -> TokenVerifier:
    jwks = write_jwks(tmp_path / "jwks.json", rsa_key())
    conf = settings.parse([], environ={"SIDECAR_JWKS": str(jwks), **env})
    keys = KeySource(conf.keys, logging.getLogger("test"), lambda: NOW)
    keys.load()
    return TokenVerifier(conf.verifier, keys, lambda: NOW)


# preset → (user, roles, tenant) its provider's token gives
EXPECTED: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "keycloak": (
        "5f0c1a2e-7a43-4f0e-9a57-2c1f3c1b8d9e",
        ("offline_access", "default-roles-acme", "uma_authorization", "orders-admin"),
        None,
    ),
    "auth0": (
        "auth0|64f1c0ffee0123456789abcd",
        ("read:orders", "write:orders"),
        "org_9ybsU1dN2dKfDkBi",
    ),
    "okta": ("alice@example.com", ("Everyone", "Sales, EMEA", "Orders Admins"), None),
    "azure": (
        "690222be-ff1a-4d56-abd1-7e4f7d38e474",
        ("Orders.Read", "Orders.Write"),
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
    ),
    "google": ("jsmith@example.com", (), "example.com"),
}


@pytest.mark.parametrize("name", sorted(idp_tokens.SHAPES))
def test_each_preset_reads_its_providers_token(name: str, tmp_path: Path) -> None:
    claims = idp_tokens.SHAPES[name](NOW)
    token = idp_tokens.sign(claims, rsa_key())
    got = verifier(
        tmp_path,
        SIDECAR_IDP=name,
        SIDECAR_JWT_ISSUER=claims["iss"],
        SIDECAR_JWT_AUDIENCE=claims["aud"][0] if isinstance(claims["aud"], list) else claims["aud"],
    ).verify(token)
    assert got == Identity(*EXPECTED[name], expires_at=NOW + 300 + 30)


def test_a_claim_setting_overrides_its_preset(tmp_path: Path) -> None:
    token = idp_tokens.sign(idp_tokens.keycloak(NOW), rsa_key())
    got = verifier(
        tmp_path,
        SIDECAR_IDP="keycloak",
        SIDECAR_CLAIM_ROLES="realm_access.roles,resource_access.orders-api.roles",
        SIDECAR_CLAIM_USER="preferred_username",
    ).verify(token)
    assert got.user == "alice"
    assert got.roles[-2:] == ("orders-admin", "orders:refund")


def test_scopes_and_a_namespaced_claim_can_be_roles(tmp_path: Path) -> None:
    token = idp_tokens.sign(idp_tokens.auth0(NOW), rsa_key())
    got = verifier(
        tmp_path, SIDECAR_CLAIM_ROLES="scope, https://example.com/roles, permissions"
    ).verify(token)
    assert got.roles == (
        "openid",
        "profile",
        "email",
        "read:orders",
        "Order Manager",
        "write:orders",
    )


def test_okta_groups_with_commas_reach_the_upstream_unambiguously(tmp_path: Path) -> None:
    token = idp_tokens.sign(idp_tokens.okta(NOW), rsa_key())
    wired = make_authorizer(verifier(tmp_path, SIDECAR_IDP="okta"), lambda: NOW)
    policy = encode(RoutePolicy(service="orders", rbac_required=False))
    outcome = wired.authorizer.check(
        CheckInput(
            method="GET",
            path="/orders/1",
            headers={"authorization": f"Bearer {token}"},
            context={POLICY_KEY: policy},
            client_ip="127.0.0.1",
        )
    )
    assert outcome.status == 200
    assert dict(outcome.set_headers)[ROLES_HEADER] == "Everyone,Sales%2C%20EMEA,Orders%20Admins"


def test_an_unknown_preset_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(SettingsError) as caught:
        settings.parse([], environ={"SIDECAR_JWT_SECRET": SECRET, "SIDECAR_IDP": "cognito"})
    assert "SIDECAR_IDP='cognito'" in str(caught.value)
    assert "keycloak, auth0, okta, azure, google" in str(caught.value)


def test_a_bad_claim_path_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match=r"SIDECAR_CLAIM_ROLES: .*position 14"):
        settings.parse(
            [],
            environ={"SIDECAR_JWT_SECRET": SECRET, "SIDECAR_CLAIM_ROLES": "realm_access..roles"},
        )


def mint_with_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    monkeypatch.setenv("SIDECAR_JWT_SECRET", SECRET)
    for name in (
        "SIDECAR_IDP",
        "SIDECAR_CLAIM_USER",
        "SIDECAR_CLAIM_ROLES",
        "SIDECAR_CLAIM_TENANT",
    ):
        monkeypatch.delenv(name, raising=False)
    code = cli.main(["token", *args])
    out = capsys.readouterr()
    return code, (out.out.strip() if code == 0 else out.err)


@pytest.mark.parametrize("name", ["keycloak", "auth0", "okta", "azure"])
def test_sidecar_token_mints_each_shape_its_preset_reads(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, token = mint_with_cli(
        capsys,
        monkeypatch,
        *("--idp", name, "--sub", "u-1", "--tenant", "t-1"),
        *("--role", "read:orders", "--role", "Sales, EMEA"),
    )
    assert code == 0, token
    conf = settings.parse([], environ={"SIDECAR_JWT_SECRET": SECRET, "SIDECAR_IDP": name})
    keys = KeySource(conf.keys, logging.getLogger("test"))
    keys.load()
    got = TokenVerifier(conf.verifier, keys).verify(token)
    assert (got.user, got.roles, got.tenant) == ("u-1", ("read:orders", "Sales, EMEA"), "t-1")
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    real = idp_tokens.SHAPES[name]()
    # Every claim the minted token carries besides times is one the provider's tokens carry.
    assert set(payload) - {"iat", "exp"} <= set(real) | {"tenant_id"}


def test_sidecar_token_puts_keycloak_roles_where_keycloak_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, token = mint_with_cli(
        capsys, monkeypatch, "--idp", "keycloak", "--sub", "u", "--role", "orders-admin"
    )
    assert code == 0, token
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["realm_access"] == {"roles": ["orders-admin"]}
    assert payload["typ"] == "Bearer"


def test_sidecar_token_refuses_roles_for_a_provider_without_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = mint_with_cli(
        capsys, monkeypatch, "--idp", "google", "--sub", "a@example.com", "--role", "admin"
    )
    assert code == 1
    assert "google tokens carry no roles: set SIDECAR_CLAIM_ROLES" in err
