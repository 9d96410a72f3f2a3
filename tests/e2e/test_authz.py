"""Every request through Envoy is authenticated and authorized by our ext_authz.

These are the `ext_authz` engine's; `test_authz_engines.py` runs them on `native` and `auto`
(or, where a test's premise does not exist there, that engine's counterpart)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar_shared.contract import AUTHZ_TRANSPORTS, POLICY_HEADER, RoutePolicy, encode
from tests.support import http, stack, tokens, wait

SPOOFED = {
    "x-user-id": "mallory",
    "x-user-roles": "admin",
    "x-tenant-upstream": "acme",
}

# Every decision, through both of Envoy's ways of calling ext_authz.
pytestmark = pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)


def call(
    envoy: stack.Envoy, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> http.Response:
    return http.http(method, envoy.url + path, headers)


def ready(envoy: stack.Envoy) -> None:
    wait.wait_until(
        lambda: (r := http.try_get(envoy.url + "/orders/1", tokens.bearer())) and r.status == 200,
        what="routing through ext_authz",
    )


def test_the_upstream_sees_identity_headers_and_the_untouched_token(envoy: stack.Envoy) -> None:
    ready(envoy)
    tok = tokens.token(sub="alice", roles=["customer", "support"], tenant="globex")
    resp = call(envoy, "/orders/7", {"authorization": f"Bearer {tok}"})
    assert resp.status == 200
    seen = resp.json()["headers"]
    assert seen["authorization"] == f"Bearer {tok}"
    assert seen["x-user-id"] == "alice"
    assert seen["x-user-roles"] == "customer,support"
    assert seen["x-tenant-id"] == "globex"
    assert seen["x-request-id"]


def test_spoofed_identity_headers_never_reach_a_protected_upstream(envoy: stack.Envoy) -> None:
    ready(envoy)
    tok = tokens.token(sub="alice", roles=["admin"], tenant=None)
    resp = call(envoy, "/catalog/1", {**tokens.bearer(tok), **SPOOFED})
    assert resp.status == 200
    seen = resp.json()["headers"]
    assert seen["x-user-id"] == "alice"
    assert seen["x-user-roles"] == "admin"
    assert "x-tenant-id" not in seen
    assert "x-tenant-upstream" not in seen


def test_spoofed_identity_headers_never_reach_a_public_upstream(envoy: stack.Envoy) -> None:
    ready(envoy)
    resp = call(envoy, "/status/health", {**SPOOFED, "x-tenant-id": "acme"})
    assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    for name in [*SPOOFED, "x-tenant-id"]:
        assert name not in seen, name


def test_a_client_tenant_header_that_differs_from_the_token_is_forbidden(
    envoy: stack.Envoy,
) -> None:
    ready(envoy)
    resp = call(envoy, "/orders/1", {**tokens.bearer(tenant="globex"), "x-tenant-id": "acme"})
    assert resp.status == 403
    assert resp.json()["error"] == "forbidden"


def test_no_token_is_401_with_rfc6750_header_and_json_body(envoy: stack.Envoy) -> None:
    ready(envoy)
    resp = call(envoy, "/orders/1")
    assert resp.status == 401
    assert resp.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert "error_description=" in resp.headers["www-authenticate"]
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == "invalid_token"
    assert body["request_id"]


def test_an_expired_token_is_401(envoy: stack.Envoy) -> None:
    ready(envoy)
    resp = call(envoy, "/orders/1", tokens.bearer(ttl_s=-120))
    assert resp.status == 401
    assert resp.json()["error"] == "invalid_token"


def test_a_role_without_the_permission_is_403_and_audited(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    ready(envoy)
    # customer may read and write orders, not delete them
    tok = tokens.token(sub="bob", roles=["customer"], tenant="globex")
    assert call(envoy, "/orders/1", tokens.bearer(tok), method="POST").status == 200
    resp = call(envoy, "/orders/1", tokens.bearer(tok), method="DELETE")
    assert resp.status == 403
    body = resp.json()
    assert body["error"] == "forbidden" and body["request_id"]
    assert resp.headers["content-type"] == "application/json"
    record = wait.wait_until(
        lambda: next(
            (a for a in authz.audit_lines() if a["request_id"] == body["request_id"]), None
        ),
        what="the audit record",
    )
    assert record["decision"] == "deny" and record["status"] == 403
    assert record["reason"] == "role_not_allowed"
    assert (record["user"], record["service"], record["method"]) == ("bob", "orders", "DELETE")
    assert tok not in authz.proc.output()


def test_a_tenant_scoped_service_needs_a_tenant(envoy: stack.Envoy) -> None:
    ready(envoy)
    assert call(envoy, "/orders/1", tokens.bearer(tenant=None)).status == 403


def test_a_tenant_with_its_own_upstream_is_routed_there(envoy: stack.Envoy) -> None:
    ready(envoy)
    acme = call(envoy, "/orders/1", tokens.bearer(tenant="acme"))
    assert acme.status == 200
    assert acme.json()["service"] == "orders-acme"
    assert acme.json()["headers"]["x-tenant-id"] == "acme"
    other = call(
        envoy, "/orders/1", {**tokens.bearer(tenant="globex"), "x-tenant-upstream": "acme"}
    )
    assert other.json()["service"] == "orders"


def test_envoy_fails_closed_with_503_when_ext_authz_is_down_and_recovers(
    xds: stack.XdsServer, tmp_path: Path
) -> None:
    # A public service without a rate limit never calls ext_authz.
    data = json.loads(xds.catalog.read_text())
    status = next(s for s in data["services"] if s["service_name"] == "status")
    status["rate_limit"] = None
    old = wait.wait_until(xds.version)
    xds.catalog.write_text(json.dumps(data))
    wait.wait_until(lambda: xds.version() != old, what="the edited catalog")

    authz = stack.start_authz(tmp_path, name="authz-1")
    envoy = stack.start_envoy(xds, tmp_path, authz=authz)
    with stack.stopping(envoy.proc):
        ready(envoy)
        authz.proc.stop()
        wait.wait_until(lambda: call(envoy, "/orders/1", tokens.bearer()).status == 503, what="503")
        public = call(envoy, "/status/x", {**SPOOFED, "x-tenant-id": "acme"})
        assert public.status == 200
        for name in [*SPOOFED, "x-tenant-id"]:  # stripped even with ext_authz off here
            assert name not in public.json()["headers"], name
        again = stack.start_authz(
            tmp_path, name="authz-2", port=authz.port, check_port=authz.check_port
        )
        with stack.stopping(again.proc):
            ready(envoy)


def test_every_decision_is_one_audit_line_without_secrets(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    ready(envoy)
    tok = tokens.token(sub="carol", tenant="globex")
    resp = call(envoy, "/orders/1?api_key=hunter2", tokens.bearer(tok))
    assert resp.status == 200
    request_id = resp.json()["headers"]["x-request-id"]
    record: dict[str, Any] = wait.wait_until(
        lambda: next((a for a in authz.audit_lines() if a["request_id"] == request_id), None),
        what="the audit record",
    )
    assert set(record) >= {
        "time",
        "request_id",
        "trace_id",
        "user",
        "tenant",
        "service",
        "method",
        "path",
        "decision",
        "status",
        "reason",
        "latency_us",
    }
    assert (record["user"], record["tenant"], record["decision"]) == ("carol", "globex", "allow")
    assert record["path"] == "/orders/1"
    output = authz.proc.output()
    assert tok not in output and "hunter2" not in output
    assert tokens.TEST_SECRET.decode() not in output
    json.dumps(record)


def test_a_client_sending_the_policy_header_changes_no_decision(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    ready(envoy)
    # A policy that would let anyone in, sent by the client under the header Envoy uses to
    # carry the route's real policy in HTTP mode (and that means nothing in gRPC mode).
    forged = {POLICY_HEADER: encode(RoutePolicy(service="orders", public=True))}
    no_token = call(envoy, "/orders/1", forged)
    assert no_token.status == 401
    customer = tokens.bearer(roles=["customer"], tenant="globex")
    assert call(envoy, "/orders/1", {**customer, **forged}, method="DELETE").status == 403
    allowed = call(envoy, "/orders/1", {**customer, **forged})
    assert allowed.status == 200
    assert allowed.json()["headers"]["x-user-id"] == "alice"
    assert POLICY_HEADER not in allowed.json()["headers"]  # nor does it reach the upstream
    request_id = allowed.json()["headers"]["x-request-id"]
    record = wait.wait_until(
        lambda: next((a for a in authz.audit_lines() if a["request_id"] == request_id), None),
        what="the audit record",
    )
    assert (record["service"], record["reason"]) == ("orders", "ok")


def test_the_clients_trace_id_reaches_the_audit_line(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    # Every client header reaches ext_authz (in HTTP mode Envoy forwards only a few unless
    # told otherwise): the trace id here, the header count for the 431 guard too.
    ready(envoy)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    resp = call(
        envoy, "/orders/1", {**tokens.bearer(), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    )
    assert resp.status == 200
    request_id = resp.json()["headers"]["x-request-id"]
    record = wait.wait_until(
        lambda: next((a for a in authz.audit_lines() if a["request_id"] == request_id), None),
        what="the audit record",
    )
    assert record["trace_id"] == trace


def _denials_accounted(authz: stack.Authz) -> int:
    """Denials in the audit: lines written, plus those counted in summary lines."""
    lines = authz.audit_lines()
    written = sum(1 for a in lines if a["decision"] == "deny")
    return written + sum(int(a["suppressed"]) for a in lines if a["decision"] == "suppressed")


def _burst_of_denials(envoy: stack.Envoy, n: int) -> float:
    """`n` denied requests, each with a token never seen before; when the last was answered."""
    for i in range(n):
        assert call(envoy, "/orders/1", {"authorization": f"Bearer bad.{i}.x"}).status in (
            401,
            429,
        )
    return time.monotonic()


def test_a_fresh_valid_token_from_an_address_whose_failure_budget_is_spent_is_allowed(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    ready(envoy)
    _burst_of_denials(envoy, 60)  # one client retrying a bad token, past the budget (50)
    assert call(envoy, "/orders/1", {"authorization": "Bearer bad.again.x"}).status == 429
    # Everyone else behind the same address: new sessions, tokens never seen before.
    for n in range(5):
        fresh = tokens.token(sub=f"new-session-{n}", roles=["customer"], tenant="globex")
        assert call(envoy, "/orders/1", tokens.bearer(fresh)).status == 200


def test_a_burst_of_60_denials_is_all_in_the_audit_within_a_second(
    envoy: stack.Envoy, authz: stack.Authz
) -> None:
    ready(envoy)
    before = _denials_accounted(authz)
    done = _burst_of_denials(envoy, 60)
    wait.wait_until(
        lambda: _denials_accounted(authz) - before == 60,
        timeout=max(0.0, done + 1.0 - time.monotonic()),
        what="60 denials written or counted",
    )


def test_denials_past_the_audit_cap_are_counted_in_a_summary_within_a_second(
    xds: stack.XdsServer, tmp_path: Path
) -> None:
    # (set through its variable, which an ext_authz without the setting ignores)
    capped = {"SIDECAR_AUDIT_DENIALS_PER_SECOND": "5"}
    authz = stack.start_authz(tmp_path, name="authz-capped", env=capped)
    with stack.stopping(authz.proc):
        envoy = stack.start_envoy(xds, tmp_path, authz=authz)
        with stack.stopping(envoy.proc):
            ready(envoy)
            before = _denials_accounted(authz)
            done = _burst_of_denials(envoy, 60)
            wait.wait_until(
                lambda: _denials_accounted(authz) - before == 60,
                timeout=max(0.0, done + 1.0 - time.monotonic()),
                what="60 denials written or counted",
            )
            summaries = [a for a in authz.audit_lines() if a["decision"] == "suppressed"]
            assert summaries
            counted = sum(c["denials"] for s in summaries for c in s["counts"])
            assert counted == sum(s["suppressed"] for s in summaries)
            assert {c["service"] for s in summaries for c in s["counts"]} == {"orders"}
