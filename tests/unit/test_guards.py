"""What one client can no longer do to the others or learn about the system: denials say
little, failures are budgeted, headers cannot overflow after an allow, method overrides are
authorized, rate-limit keys do not collide, and the audit log stays bounded."""

from __future__ import annotations

import io
import json
from typing import Any

import jwt

from ext_authz.audit import AuditLog, SuppressedRecord
from ext_authz.core import GuardSettings
from ext_authz.decision import CheckInput, Outcome
from ext_authz.limits import address_key, user_key
from ext_authz.observers import AuditObserver, trace_id
from ext_authz.ratelimit import MemoryLimiter
from ext_authz.tokens import TokenVerifier, VerifierSettings
from sidecar_shared.contract import POLICY_KEY, Limit, RoutePolicy
from tests.support.authorizers import Wired, key_source, make_authorizer
from tests.support.fakes import FakeClock
from tests.support.metrics import total
from tests.support.policies import encode

SECRET = b"guard-test-secret-that-is-long-enough-0123456789"
NOW = 1_800_000_000.0
READERS = RoutePolicy(service="ordersadmin", allowed_roles={"read": frozenset({"reader"})})


def tok(sub: str = "alice", roles: tuple[str, ...] = ("reader",), **claims: Any) -> str:
    payload = {"sub": sub, "roles": list(roles), "exp": int(NOW) + 600, **claims}
    return jwt.encode(payload, SECRET, "HS256")


def wired(clock: FakeClock | None = None, **guard: Any) -> Wired:
    clock = clock or FakeClock(NOW)
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET, clock=clock), clock)
    return make_authorizer(verifier, clock, guard=GuardSettings(**guard))


def check(
    w: Wired,
    headers: dict[str, str],
    policy: RoutePolicy = READERS,
    method: str = "GET",
    ip: str = "198.51.100.7",
) -> Outcome:
    return w.authorizer.check(
        CheckInput(method, "/ordersadmin/1", headers, {POLICY_KEY: encode(policy)}, ip)
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_denials_name_no_service_role_or_key_by_default() -> None:
    w = wired()
    forbidden = check(w, bearer(tok(roles=("nobody",))))
    assert forbidden.status == 403
    assert "ordersadmin" not in forbidden.body.decode()
    assert json.loads(forbidden.body)["message"] == "this request is not allowed"
    unknown_kid = jwt.encode({"sub": "a", "exp": int(NOW) + 60}, SECRET, "HS256", {"kid": "k/1"})
    refused = check(w, bearer(unknown_kid))
    assert refused.status == 401
    assert "kid" not in refused.body.decode()
    assert "kid" not in dict(refused.response_headers)["www-authenticate"]
    # The precise reason stays for the operator.
    assert refused.reason == "unknown_kid"
    assert forbidden.reason == "role_not_allowed"


def test_verbose_denials_tell_the_precise_reason() -> None:
    w = wired(verbose_denials=True)
    forbidden = check(w, bearer(tok(roles=("nobody",))))
    assert json.loads(forbidden.body)["message"] == "no role of the caller may read on ordersadmin"


def test_an_address_that_keeps_failing_gets_429_for_what_fails_and_valid_tokens_still_pass() -> (
    None
):
    clock = FakeClock(NOW)
    w = wired(clock, failure_budget=3, failure_window_s=10)
    good = tok()
    assert check(w, bearer(good)).status == 200  # verified and cached before the flood
    for i in range(3):
        assert check(w, bearer(f"garbage.{i}.x")).status == 401
    blocked = check(w, bearer("garbage.3.x"))
    assert blocked.status == 429
    assert blocked.reason == "auth_failures"
    assert 1 <= int(dict(blocked.response_headers)["retry-after"]) <= 10
    assert check(w, {}).status == 429  # no token: refused before any token work
    # A fresh token that verifies passes (the budget is spent only on what failed), as does a
    # cached one; other addresses are not affected; the window's end lifts the block.
    assert check(w, bearer(tok(sub="bob"))).status == 200
    assert check(w, bearer(good)).status == 200
    assert check(w, bearer("garbage.4.x"), ip="203.0.113.9").status == 401
    clock.now += 10
    assert check(w, bearer("garbage.5.x")).status == 401


def test_a_replayed_bad_token_is_answered_from_the_negative_cache() -> None:
    w = wired(failure_budget=0)
    bad = tok()[:-4] + "AAAA"
    for _ in range(3):
        assert check(w, bearer(bad)).reason == "bad_signature"


def test_a_request_whose_identity_headers_would_not_fit_is_431_not_an_allow() -> None:
    w = wired(max_request_headers=100)
    headers = {f"x-h{i}": "v" for i in range(97)} | bearer(tok())
    out = check(w, headers)
    assert out.status == 431
    assert json.loads(out.body)["error"] == "headers_too_large"
    fits = {f"x-h{i}": "v" for i in range(90)} | bearer(tok())
    assert check(w, fits).status == 200


def test_a_repeated_header_counts_once_per_line_as_envoy_counts_it() -> None:
    w = wired(max_request_headers=100)
    # Envoy hands ext_authz the 96 lines of one name joined by commas: one name, 96 lines
    # (the same count of distinct names is a 431 too, above).
    joined = {"x-dup": ",".join(["v"] * 96)} | bearer(tok())
    out = check(w, joined)
    assert out.status == 431
    assert json.loads(out.body)["error"] == "headers_too_large"
    assert check(w, {"x-dup": ",".join(["v"] * 80)} | bearer(tok())).status == 200


def test_a_method_override_is_authorized_only_where_the_service_honours_it() -> None:
    w = wired()
    honours = RoutePolicy(
        service="ordersadmin", allowed_roles={"read": frozenset({"reader"})}, method_override=True
    )
    for header in ("x-http-method-override", "x-http-method", "x-method-override"):
        sneaky = bearer(tok()) | {header: "DELETE"}
        out = check(w, sneaky, policy=honours)
        assert out.status == 403, header
        assert out.reason == "role_not_allowed"
    assert check(w, bearer(tok()) | {"x-http-method-override": "HEAD"}, policy=honours).allowed


def test_rate_limit_keys_of_different_users_never_collide() -> None:
    assert user_key("svc", "a|b", "c") != user_key("svc", "a", "b|c")
    assert user_key("s", "t", "1:u") != user_key("s", "t1:", "u")
    assert address_key("svc", "1.2.3.4") != address_key("svc|ip", "1.2.3.4")


def test_two_users_whose_keys_once_collided_have_separate_quotas() -> None:
    clock = FakeClock(NOW)
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET, clock=clock), clock)
    w = make_authorizer(verifier, clock, limiter=MemoryLimiter(clock=clock))
    limited = RoutePolicy(service="svc", rbac_required=False, rate_limit=Limit(1, 60))
    first = bearer(tok(sub="c", tenant_id="a|b"))
    second = bearer(tok(sub="b|c", tenant_id="a"))
    assert check(w, first, policy=limited).status == 200
    assert check(w, second, policy=limited).status == 200


def test_trace_ids_are_kept_only_when_valid() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id({"traceparent": good}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in (
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 has 4 fields
        "00-victim-trace-0001-01",
    ):
        assert trace_id({"traceparent": bad}) is None, bad
    assert trace_id({"x-b3-traceid": "463ac35c9f6413ad"}) == "463ac35c9f6413ad"
    for bad in ("victim-trace-0001", "x" * 20_000, '"quoted"', "0" * 32, "463AC35C9F6413AD"):
        assert trace_id({"x-b3-traceid": bad}) is None


def test_denials_are_audited_at_a_bounded_rate_and_summarized() -> None:
    clock = FakeClock(NOW)
    stream = io.StringIO()
    log = AuditLog(stream)
    observer = AuditObserver(log, denials_per_second=5)
    w = wired(clock, failure_budget=0)
    w.authorizer._observers = (*w.authorizer._observers, observer)
    big = {"x-b3-traceid": "a" * 4000, "x-request-id": "r" * 4000}
    for _ in range(1000):
        check(w, big)
    clock.now += 1
    check(w, {})
    log.flush()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    denials = [x for x in lines if x["decision"] == "deny"]
    summaries = [x for x in lines if x["decision"] == "suppressed"]
    assert len(denials) == 6
    assert summaries == [
        {
            "time": summaries[0]["time"],
            "decision": "suppressed",
            "suppressed": 995,
            "counts": [{"service": "ordersadmin", "reason": "missing_token", "denials": 995}],
            "audit": True,
        }
    ]
    assert max(len(x) for x in stream.getvalue().splitlines()) < 1200
    assert all(x["trace_id"] is None for x in denials)
    # Metrics still count every denial.
    count = total(w.registry, "ext_authz_checks_total", status="401", reason="missing_token")
    assert count == 1001


def test_audit_lines_wait_in_a_bounded_buffer_for_the_writer_thread() -> None:
    stream = io.StringIO()
    log = AuditLog(stream, max_buffered=3)
    for n in range(5):
        log.write_suppressed(SuppressedRecord(NOW, f"10.0.0.{n}", 1))
    assert stream.getvalue() == ""  # nothing written on the caller's thread
    log.flush()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x.get("client") for x in lines[:3]] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert lines[3]["decision"] == "dropped" and lines[3]["dropped"] == 2
    log.start(interval_s=0.01)
    log.write_suppressed(SuppressedRecord(NOW, "10.0.0.9", 1))
    log.close()
    assert json.loads(stream.getvalue().splitlines()[-1])["client"] == "10.0.0.9"
