"""Both engines give the same answers: every generated request goes through three real Envoys
fed by three xDS servers (`--decision ext_authz`, `native`, `auto`) over one catalog, one
ext_authz and the same upstreams, and the status, the denial body, `WWW-Authenticate` and the
identity headers the upstream saw must agree. Differences the docs list (docs/engines.md) are
kept out of the generated cases: percent-encoded identity values, the failed-auth budget,
verbose denials, limits (compared apart, as a sequence)."""

from __future__ import annotations

import http.client as http_client
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.claims import set_claim
from sidecar.echo import EchoServer
from tests.support import http, stack, wait
from tests.support.catalogs import write_catalog
from tests.support.engines import access_log, counters
from tests.support.keys import KeyPair, rsa_key, write_jwks
from tests.support.ports import free_port

ISSUER = "https://issuer.test"
AUDIENCE = "sidecar-api"
ENGINES = ("ext_authz", "native", "auto")
IDENTITY = ("x-user-id", "x-user-roles", "x-tenant-id", "x-tenant-upstream")
ROLES = {
    "admin": ["*"],
    "reader": ["docs:read", "ledger:read", "quota:read"],
    "writer": ["docs:write", "ledger:write", "feed:write"],
    "deleter": ["docs:delete"],
}
SERVICES: list[dict[str, Any]] = [
    {"service_name": "docs", "base_path": "/docs"},
    {"service_name": "ledger", "base_path": "/ledger", "tenant_scope": "tenant"},
    {"service_name": "feed", "base_path": "/feed", "rbac_required": False},
    {"service_name": "pub", "base_path": "/pub", "public": True},
    {
        "service_name": "quota",
        "base_path": "/quota",
        "rate_limit": {"requests_per_minute": 3},
    },
]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _key(name: str) -> KeyPair:
    return rsa_key(name)


# Each identity provider's shape (`SIDECAR_IDP`): where the user, roles and tenant are.
SHAPES = {
    "": ("sub", "roles", "tenant_id"),
    "keycloak": ("sub", "realm_access.roles", "tenant_id"),
    "azure": ("oid", "roles", "tid"),
}


def mint(
    kind: str,
    sub: str,
    roles: list[str] | None,
    role: str | None,
    tenant: str | None,
    shape: str = "",
) -> str:
    """A token of `kind` (valid, expired, early, wrong_key, wrong_issuer, wrong_audience,
    no_exp) with the claims where the IdP `shape` keeps them."""
    user_claim, roles_claim, tenant_claim = SHAPES[shape]
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "iat": now - 5}
    claims[user_claim] = sub
    claims["exp"] = now - 600 if kind == "expired" else now + 600
    if kind == "early":
        claims["nbf"] = now + 600
    if kind == "wrong_issuer":
        claims["iss"] = "https://other.test"
    if kind == "wrong_audience":
        claims["aud"] = "someone-else"
    if kind == "no_exp":
        del claims["exp"]
    if roles is not None:
        set_claim(claims, roles_claim, roles)
    if role is not None:
        claims["role"] = role
    if tenant is not None:
        claims[tenant_claim] = tenant
    signer = _key("stranger" if kind == "wrong_key" else "signer")
    return jwt.encode(claims, signer.private, algorithm="RS256", headers={"kid": "signer"})


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory, shape: str
) -> Iterator[dict[str, stack.Envoy]]:
    workdir = tmp_path_factory.mktemp("engines")
    upstreams = [EchoServer(s["service_name"], port=free_port()).start() for s in SERVICES]
    services = [
        {**s, "internal_url": f"http://127.0.0.1:{u.port}"}
        for s, u in zip(SERVICES, upstreams, strict=True)
    ]
    catalog = write_catalog(workdir, services, ROLES)
    jwks = write_jwks(workdir / "jwks.json", _key("signer"))
    keys = {
        "SIDECAR_JWKS": str(jwks),
        "SIDECAR_JWT_ISSUER": ISSUER,
        "SIDECAR_JWT_AUDIENCE": AUDIENCE,
        "SIDECAR_JWT_SECRET": "",
        "SIDECAR_IDP": shape,
    }
    # No failed-auth budget in native: keep ext_authz's out of reach of the generated cases.
    authz = stack.start_authz(workdir, env=keys, args=["--failed-auth-budget", "0"])
    started: list[stack.Proc] = [authz.proc]
    envoys: dict[str, stack.Envoy] = {}
    try:
        for engine in ENGINES:
            xds = stack.start_xds(
                catalog,
                workdir,
                name=f"xds-{engine}",
                env={**keys, "SIDECAR_DECISION": engine},
                args=stack.VETO_UNAUTHENTICATED,
            )
            started.append(xds.proc)
            envoy = stack.start_envoy(xds, workdir, node_id=f"envoy-{engine}", authz=authz)
            started.append(envoy.proc)
            envoys[engine] = envoy
        for envoy in envoys.values():
            stack.wait_for_route(envoy, "/docs/x")
        yield envoys
    finally:
        for proc in reversed(started):
            proc.stop()
        for u in upstreams:
            u.stop()


def observe(resp: http.Response) -> dict[str, Any]:
    """What a client and an upstream can tell apart (request ids aside: each Envoy makes its
    own)."""
    out: dict[str, Any] = {"status": resp.status}
    if resp.status == 200 and resp.body:
        seen = resp.json()["headers"]
        out["identity"] = {name: seen.get(name) for name in (*IDENTITY, "authorization")}
    elif resp.body:
        body = resp.json()
        assert body.pop("request_id"), body
        out["body"] = body
    out["www-authenticate"] = resp.headers.get("www-authenticate")
    return out


PATHS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12)
# Identity values travel percent-encoded past the plain characters: the same rule both ways.
NAMES = st.text(alphabet="abz09-._~:/@|%+, é", min_size=1, max_size=12).filter(
    lambda v: v == v.strip()
)
ROLE_NAMES = st.sampled_from([*ROLES, "stranger", "read er", "ops|eu"])
TENANTS = st.sampled_from(["acme", "globex", "eu|west", "société"])
TOKENS = st.sampled_from(
    ["valid"] * 6
    + ["expired", "early", "wrong_key", "wrong_issuer", "wrong_audience", "no_exp", "none", "bad"]
)


@st.composite
def requests(draw: Callable[..., Any], shape: str) -> tuple[str, str, dict[str, str]]:
    kind = draw(TOKENS)
    headers: dict[str, str] = {}
    if kind == "bad":
        headers["authorization"] = draw(st.sampled_from(["Bearer a.b.c", "Basic abc", "Bearer "]))
    elif kind != "none":
        roles = draw(st.one_of(st.none(), st.lists(ROLE_NAMES, max_size=3, unique=True)))
        role = draw(st.one_of(st.none(), ROLE_NAMES))
        role = None if shape else role  # a preset reads no `role` fallback
        tenant = draw(st.one_of(st.none(), TENANTS))
        tok = mint(kind, draw(NAMES), roles, role, tenant, shape)
        headers["authorization"] = f"Bearer {tok}"
    client_tenant = draw(st.one_of(st.none(), st.sampled_from(["acme", "globex"])))
    if client_tenant is not None:
        headers["x-tenant-id"] = client_tenant
    if draw(st.booleans()):
        headers["x-user-id"] = "mallory"
        headers["x-user-roles"] = "admin"
    service = draw(st.sampled_from(["docs", "ledger", "feed", "pub"]))
    path = f"/{service}/{draw(PATHS)}"
    return draw(st.sampled_from(METHODS)), path, headers


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_every_engine_answers_like_ext_authz(
    engines: dict[str, stack.Envoy], shape: str, data: st.DataObject
) -> None:
    method, path, headers = data.draw(requests(shape))
    answers = {
        name: observe(http.http(method, envoy.url + path, headers))
        for name, envoy in engines.items()
    }
    for name in ("native", "auto"):
        assert answers[name] == answers["ext_authz"], (name, method, path, headers)


@pytest.mark.parametrize("service", ["docs", "ledger", "feed"])
def test_every_tenant_rule_agrees(
    engines: dict[str, stack.Envoy], shape: str, service: str
) -> None:
    """Every combination of the tenant rules, not left to the generator: a token with a tenant
    or none, a client `x-tenant-id` absent, equal, different or empty, on a plain, a
    tenant-scoped and a role-free service; a GET and a DELETE (allowed and refused by role)."""
    for tenant in (None, "acme"):
        tok = mint("valid", "tenant-rules", ["reader"], None, tenant, shape)
        for client in (None, "acme", "globex", ""):
            headers = {"authorization": f"Bearer {tok}"}
            if client is not None:
                headers["x-tenant-id"] = client
            for method in ("GET", "DELETE"):
                answers = {
                    name: observe(http.http(method, envoy.url + f"/{service}/t", headers))
                    for name, envoy in engines.items()
                }
                case = (service, tenant, client, method)
                assert answers["native"] == answers["auto"] == answers["ext_authz"], case
    # What the rules say, so that all three agreeing on nothing cannot pass.
    tok = mint("valid", "tenant-rules", ["reader"], None, None, shape)
    bare = http.get(engines["native"].url + f"/{service}/t", {"authorization": f"Bearer {tok}"})
    assert bare.status == (403 if service == "ledger" else 200)


def _raw_get(envoy: stack.Envoy, path: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """A GET with `headers` exactly as listed (repeated names, any spelling)."""
    conn = http_client.HTTPConnection("127.0.0.1", envoy.listener_port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    finally:
        conn.close()
    if status == 200:
        return {"status": status, "tenant": json.loads(body)["headers"].get("x-tenant-id")}
    return {"status": status, "error": json.loads(body).get("error") if body else None}


@pytest.mark.parametrize(
    "sent",
    [
        [("X-Tenant-ID", "acme")],
        [("x-tenant-id", "acme"), ("x-tenant-id", "acme")],
        [("x-tenant-id", "acme"), ("X-TENANT-ID", "globex")],
        [("x-tenant-id", "acme,globex")],
        [("x-tenant-id", " acme")],
    ],
    ids=["spelling", "twice-same", "twice-different", "comma", "space"],
)
def test_a_client_tenant_header_in_any_spelling_or_number_agrees(
    engines: dict[str, stack.Envoy], shape: str, sent: list[tuple[str, str]]
) -> None:
    """What an attacker may send as `x-tenant-id`: each engine gives the same answer, and the
    upstream never sees a tenant other than the token's."""
    tok = mint("valid", "tenant-spelling", ["reader"], None, "acme", shape)
    headers = [("authorization", f"Bearer {tok}"), *sent]
    answers = {name: _raw_get(envoy, "/ledger/t", headers) for name, envoy in engines.items()}
    assert answers["native"] == answers["auto"] == answers["ext_authz"], sent
    assert answers["native"].get("tenant") in (None, "acme")


def test_a_limit_sequence_agrees(engines: dict[str, stack.Envoy], shape: str) -> None:
    """A burst past the limit: the same statuses, bodies and Retry-After presence, in order."""
    statuses: dict[str, list[int]] = {}
    for name, envoy in engines.items():
        tok = mint("valid", f"burst-{name}", ["reader"], None, "acme", shape)
        seq = [
            http.get(envoy.url + "/quota/x", {"authorization": f"Bearer {tok}"}) for _ in range(5)
        ]
        statuses[name] = [r.status for r in seq]
        denied = seq[-1]
        assert denied.json()["error"] == "rate_limited"
        assert denied.headers.get("retry-after")
    assert statuses["native"] == statuses["auto"] == statuses["ext_authz"] == [200] * 3 + [429] * 2


def test_native_decides_in_envoy_and_auto_only_where_it_compiles(
    engines: dict[str, stack.Envoy], shape: str
) -> None:
    """The answers above came from Envoy's filters: the native Envoy never called ext_authz,
    the auto one only for the limited route."""
    tok = mint("valid", "counted", ["reader"], None, "acme", shape)
    for envoy in engines.values():
        for path in ("/docs/1", "/quota/1"):
            http.get(envoy.url + path, {"authorization": f"Bearer {tok}"})
    assert counters(engines["native"], "ext_authz") == 0
    assert counters(engines["native"], "jwt_authn.allowed") > 0
    assert counters(engines["native"], "rbac.allowed") > 0
    assert counters(engines["ext_authz"], "jwt_authn") == 0
    assert counters(engines["auto"], "jwt_authn.allowed") > 0
    assert counters(engines["auto"], "ext_authz.ok") > 0  # /quota: its limit is ext_authz's


def test_envoy_writes_the_audit_fields_of_a_native_decision(
    engines: dict[str, stack.Envoy], shape: str
) -> None:
    """The native Envoy's access log line names the verified user and tenant of an allowed
    request, and why jwt_authn refused a token, beside the status and the request id."""
    envoy = engines["native"]
    tok = mint("valid", "audited-user", ["reader"], None, "acme", shape)
    allowed = http.get(envoy.url + "/docs/audit", {"authorization": f"Bearer {tok}"})
    expired = mint("expired", "late-user", ["reader"], None, "acme", shape)
    refused = http.get(envoy.url + "/docs/audit", {"authorization": f"Bearer {expired}"})
    assert (allowed.status, refused.status) == (200, 401)

    def lines() -> list[dict[str, Any]]:
        return [a for a in access_log(envoy) if a.get("path") == "/docs/audit"]

    wait.wait_until(lambda: len(lines()) >= 2, what="both access log lines")
    by_status = {line["status"]: line for line in lines()}
    assert by_status[200]["user"] == "audited-user"
    assert by_status[200]["tenant"] == "acme"
    assert by_status[200]["request_id"] == allowed.json()["headers"]["x-request-id"]
    assert "expired" in by_status[401]["authn_failure"].lower()
    assert by_status[401]["request_id"] == refused.json()["request_id"]


def test_a_token_without_its_user_claim_is_401_on_every_engine(
    engines: dict[str, stack.Envoy], shape: str
) -> None:
    user_claim = SHAPES[shape][0]
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "sub": "x"}
    claims.pop(user_claim, None)
    signer = _key("signer")
    tok = jwt.encode(claims, signer.private, algorithm="RS256", headers={"kid": "signer"})
    answers = {
        name: observe(http.get(envoy.url + "/feed/1", {"authorization": f"Bearer {tok}"}))
        for name, envoy in engines.items()
    }
    assert answers["ext_authz"]["status"] == 401
    assert answers["native"] == answers["auto"] == answers["ext_authz"]


def test_no_engine_sends_envoy_a_deprecated_field(
    engines: dict[str, stack.Envoy], shape: str
) -> None:
    """Envoy warns of every deprecated field it is sent, once per use, and a later Envoy
    refuses it: what we compile uses none (the log of each Envoy after the whole module)."""
    for name, envoy in engines.items():
        deprecated = [line for line in envoy.proc.output().splitlines() if "eprecated" in line]
        assert deprecated == [], (name, deprecated[:3])
