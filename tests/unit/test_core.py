"""The decision core: what an allowed request carries upstream, and every denial's shape."""

from __future__ import annotations

import json

import jwt
from prometheus_client import CollectorRegistry

from ext_authz.core import Authorizer
from ext_authz.decision import CheckInput, Outcome
from ext_authz.tokens import TokenVerifier, VerifierSettings
from sidecar_shared.contract import POLICY_KEY, RoutePolicy, decode_identity
from tests.support.authorizers import Wired, key_source, make_authorizer
from tests.support.policies import encode

SECRET = b"core-test-secret-that-is-long-enough-0123456789"
NOW = 1_800_000_000.0


def make(audit_sample: float = 1.0) -> tuple[Authorizer, Wired, CollectorRegistry]:
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET), lambda: NOW)
    wired = make_authorizer(verifier, lambda: NOW, audit_sample=audit_sample)
    return wired.authorizer, wired, wired.registry


def tok(**claims: object) -> str:
    payload = {"sub": "alice", "roles": ["reader"], "exp": int(NOW) + 60, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, "HS256")


def run(
    auth: Authorizer,
    policy: RoutePolicy | None,
    headers: dict[str, str],
    method: str = "GET",
) -> Outcome:
    context = {POLICY_KEY: encode(policy)} if policy else {}
    return auth.check(CheckInput(method, "/orders/1?x=1", headers, context, "10.1.2.3"))


ORDERS = RoutePolicy(
    service="orders",
    allowed_roles={"read": frozenset({"reader"})},
    tenant_upstreams=frozenset({"acme"}),
)


def test_allowed_requests_carry_identity_and_lose_what_is_not_set() -> None:
    auth, _, _ = make()
    out = run(auth, ORDERS, {"authorization": f"Bearer {tok()}", "x-request-id": "rid-1"})
    assert out.allowed
    assert dict(out.set_headers) == {
        "x-user-id": "alice",
        "x-user-roles": "reader",
        "x-request-id": "rid-1",
    }
    assert set(out.remove_headers) == {"x-tenant-id", "x-tenant-upstream"}
    assert "authorization" not in dict(out.set_headers)


def test_a_tenant_with_its_own_upstream_gets_the_routing_header() -> None:
    auth, _, _ = make()
    out = run(auth, ORDERS, {"authorization": f"Bearer {tok(tenant_id='acme')}"})
    assert dict(out.set_headers)["x-tenant-upstream"] == "acme"
    assert dict(out.set_headers)["x-tenant-id"] == "acme"
    other = run(auth, ORDERS, {"authorization": f"Bearer {tok(tenant_id='globex')}"})
    assert "x-tenant-upstream" in other.remove_headers


def test_identity_values_are_forwarded_in_one_unambiguous_encoding() -> None:
    auth, _, _ = make()
    token = tok(sub="alice, admin", tenant_id="acme\u0085x", roles=["reader", "Sales, EMEA"])
    out = run(auth, ORDERS, {"authorization": f"Bearer {token}"})
    assert out.allowed
    headers = dict(out.set_headers)
    assert headers["x-user-id"] == "alice%2C%20admin"  # one user, not two
    assert headers["x-tenant-id"] == "acme%C2%85x"  # no C1 control reaches an upstream
    assert headers["x-user-roles"] == "reader,Sales%2C%20EMEA"  # the same rule
    assert decode_identity(headers["x-user-id"]) == "alice, admin"
    assert decode_identity(headers["x-tenant-id"]) == "acme\u0085x"
    plain = run(auth, ORDERS, {"authorization": f"Bearer {tok(sub='bob@example.com')}"})
    assert dict(plain.set_headers)["x-user-id"] == "bob@example.com"  # as it is


def test_a_denial_has_a_json_body_with_the_request_id() -> None:
    auth, _, _ = make()
    out = run(auth, ORDERS, {"x-request-id": "rid-2"})
    assert out.status == 401
    body = json.loads(out.body)
    assert body == {
        "error": "invalid_token",
        "message": "a valid bearer token is required",
        "request_id": "rid-2",
    }
    headers = dict(out.response_headers)
    assert headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="a valid bearer token is required"'
    )
    forbidden = run(auth, ORDERS, {"authorization": f"Bearer {tok()}"}, method="DELETE")
    assert forbidden.status == 403
    assert "www-authenticate" not in dict(forbidden.response_headers)
    assert json.loads(forbidden.body)["error"] == "forbidden"


def test_a_basic_authorization_header_is_401() -> None:
    auth, _, _ = make()
    assert run(auth, ORDERS, {"authorization": "Basic YWxpY2U6cHc="}).status == 401


def test_a_route_without_policy_is_denied() -> None:
    auth, _, _ = make()
    out = run(auth, None, {"authorization": f"Bearer {tok()}"})
    assert (out.status, out.reason) == (403, "no_policy")


def test_public_routes_need_no_token_and_strip_identity() -> None:
    auth, _, _ = make()
    out = run(auth, RoutePolicy(service="status", public=True), {})
    assert out.allowed
    assert set(out.remove_headers) >= {"x-user-id", "x-tenant-id", "x-user-roles"}


def test_denials_are_always_audited_and_allows_are_sampled() -> None:
    auth, stream, _ = make(audit_sample=0.0)
    run(auth, ORDERS, {"authorization": f"Bearer {tok()}"})
    run(
        auth,
        ORDERS,
        {
            "authorization": f"Bearer {tok()}",
            "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        },
        method="POST",
    )
    lines = [json.loads(line) for line in stream.audit_text().splitlines()]
    assert [(r["decision"], r["status"]) for r in lines] == [("deny", 403)]
    record = lines[0]
    assert record["trace_id"] == "a" * 32
    assert record["path"] == "/orders/1"
    assert record["reason"] == "role_not_allowed"
    assert isinstance(record["latency_us"], int)


def test_decisions_are_counted_by_status_and_reason() -> None:
    auth, _, registry = make()
    run(auth, ORDERS, {})
    run(auth, ORDERS, {"authorization": f"Bearer {tok()}"})
    denied = {"decision": "deny", "status": "401", "reason": "missing_token", "service": "orders"}
    assert registry.get_sample_value("ext_authz_checks_total", denied) == 1
    allowed = {"decision": "allow", "status": "200", "reason": "ok", "service": "orders"}
    assert registry.get_sample_value("ext_authz_checks_total", allowed) == 1
    assert registry.get_sample_value("ext_authz_check_duration_seconds_count") == 2
