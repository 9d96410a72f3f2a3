"""The core of the decision suite (`test_authz.py`) run again on the native engine: the same
test functions, through an Envoy whose xDS server says `--decision native`, with RS256 tokens
(an HS secret is never compiled into Envoy) and the sample catalog's orders without tenant
upstreams (which only ext_authz can choose). Each asserts what a client and an upstream see."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.e2e import test_authz as suite
from tests.support import http, metrics, stack, tokens
from tests.support.keys import rsa_key, write_jwks

SIGNER = "native-suite"

# A core subset (each test starts its own stack; the differential test covers the rest).
test_spoofed_identity_headers_never_reach_a_public_upstream = (
    suite.test_spoofed_identity_headers_never_reach_a_public_upstream
)
test_a_client_tenant_header_that_differs_from_the_token_is_forbidden = (
    suite.test_a_client_tenant_header_that_differs_from_the_token_is_forbidden
)
test_no_token_is_401_with_rfc6750_header_and_json_body = (
    suite.test_no_token_is_401_with_rfc6750_header_and_json_body
)


def rs256_token(
    sub: str = "alice",
    roles: list[str] | None = None,
    tenant: str | None = "globex",
    secret: bytes = b"",
    ttl_s: int = 600,
) -> str:
    """`tokens.token`'s claims, signed with the suite's RSA key (`secret` is ignored)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "roles": ["admin"] if roles is None else roles,
        "iat": now,
        "exp": now + ttl_s,
    }
    if tenant is not None:
        claims["tenant_id"] = tenant
    return jwt.encode(claims, rsa_key(SIGNER).private, algorithm="RS256", headers={"kid": SIGNER})


@pytest.fixture(autouse=True)
def native_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "token", rs256_token)


@pytest.fixture
def jwks_env(tmp_path: Path) -> dict[str, str]:
    jwks = write_jwks(tmp_path / "jwks.json", rsa_key(SIGNER))
    return {"SIDECAR_JWKS": str(jwks), "SIDECAR_JWT_SECRET": ""}


@pytest.fixture
def sample_catalog(sample_catalog: Path) -> Path:
    data = json.loads(sample_catalog.read_text())
    for svc in data["services"]:
        svc.pop("tenant_upstreams", None)
    sample_catalog.write_text(json.dumps(data))
    return sample_catalog


@pytest.fixture
def xds(
    sample_catalog: Path, tmp_path: Path, jwks_env: dict[str, str]
) -> Iterator[stack.XdsServer]:
    server = stack.start_xds(
        sample_catalog,
        tmp_path,
        env={**jwks_env, "SIDECAR_DECISION": "native"},
        args=stack.VETO_UNAUTHENTICATED,
    )
    yield server
    server.proc.stop()


@pytest.fixture
def authz(tmp_path: Path, jwks_env: dict[str, str]) -> Iterator[stack.Authz]:
    server = stack.start_authz(tmp_path, env=jwks_env)
    yield server
    server.proc.stop()


def test_the_upstream_sees_identity_headers_and_ext_authz_is_never_asked(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    """The suite's identity-header test, spoofed headers too, and the answers are Envoy's:
    ext_authz counted no check."""
    suite.test_the_upstream_sees_identity_headers_and_the_untouched_token(envoy)
    suite.test_spoofed_identity_headers_never_reach_a_protected_upstream(envoy)
    assert http.get(envoy.url + "/orders/1").status == 401
    assert metrics.scraped(authz.metrics(), "ext_authz_checks_total") == 0
