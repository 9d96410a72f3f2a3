"""A dry-run route (`"enforce": "dry_run"`): ext_authz decides as usual, records a denial as
`would_deny` (audit line, metric) and allows the request; the policy carries it, signed."""

from __future__ import annotations

import json
import time

from ext_authz.decision import CheckInput, Outcome
from ext_authz.ratelimit import MemoryLimiter
from sidecar_shared.contract import POLICY_KEY, Limit, RoutePolicy, decode
from sidecar_shared.contract import encode as encode_plain
from tests.support.authorizers import Wired, key_source, make_authorizer, make_verifier
from tests.support.metrics import total
from tests.support.policies import encode
from tests.support.tokens import TEST_SECRET, token
from xds_server.catalog import parse_catalog
from xds_server.route_policy import compile_policy

DRY = RoutePolicy(
    service="orders",
    allowed_roles={"read": frozenset({"reader"})},
    rate_limit=Limit(1, 60),
    dry_run=True,
)


def wired() -> Wired:
    clock = time.time
    return make_authorizer(
        make_verifier(key_source(TEST_SECRET), clock), clock, limiter=MemoryLimiter(clock=clock)
    )


def check(
    w: Wired, policy: RoutePolicy, headers: dict[str, str], method: str = "DELETE"
) -> Outcome:
    return w.authorizer.check(
        CheckInput(method, "/orders/1", headers, {POLICY_KEY: encode(policy)}, "127.0.0.1")
    )


def audit(w: Wired) -> list[dict[str, object]]:
    return [json.loads(line) for line in w.audit_text().splitlines()]


def test_a_denial_on_a_dry_run_route_is_allowed_as_would_deny() -> None:
    w = wired()
    bearer = {"authorization": f"Bearer {token(roles=['writer'])}"}
    outcome = check(w, DRY, bearer)
    assert outcome.allowed
    assert (outcome.would_deny, outcome.reason) == (403, "role_not_allowed")
    assert dict(outcome.set_headers)["x-user-id"] == "alice"  # identity still goes upstream
    (line,) = audit(w)
    assert (line["decision"], line["status"], line["reason"]) == (
        "would_deny",
        403,
        "role_not_allowed",
    )
    assert (
        total(
            w.registry,
            "ext_authz_checks_total",
            decision="would_deny",
            status="403",
            reason="role_not_allowed",
            service="orders",
        )
        == 1
    )


def test_a_missing_token_and_an_exhausted_limit_are_would_deny_too() -> None:
    w = wired()
    anonymous = check(w, DRY, {}, "GET")
    assert (anonymous.status, anonymous.would_deny, anonymous.reason) == (
        200,
        401,
        "missing_token",
    )
    assert "x-user-id" in anonymous.remove_headers  # no identity: none forwarded
    reader = {"authorization": f"Bearer {token(roles=['reader'])}"}
    assert check(w, DRY, reader, "GET").would_deny == 0
    over = check(w, DRY, reader, "GET")
    assert (over.status, over.would_deny, over.reason) == (200, 429, "rate_limited")
    assert any(name == "ratelimit" for name, _ in over.response_headers)
    assert not any(name == "retry-after" for name, _ in over.response_headers)


def test_an_enforcing_route_still_denies() -> None:
    w = wired()
    bearer = {"authorization": f"Bearer {token(roles=['writer'])}"}
    outcome = check(w, RoutePolicy(**{**DRY.__dict__, "dry_run": False}), bearer)
    assert (outcome.status, outcome.would_deny) == (403, 0)
    assert audit(w)[0]["decision"] == "deny"


def test_the_policy_carries_dry_run_and_an_enforcing_one_is_unchanged_on_the_wire() -> None:
    assert decode(encode_plain(DRY)).dry_run
    enforcing = RoutePolicy(service="orders")
    assert '"dry_run"' not in encode_plain(enforcing)
    assert not decode(encode_plain(enforcing)).dry_run


def test_the_catalog_s_enforce_field_compiles_into_the_policy() -> None:
    catalog = parse_catalog(
        {
            "services": [
                {"service_name": "a", "base_path": "/a", "internal_url": "http://h:1"},
                {
                    "service_name": "b",
                    "base_path": "/b",
                    "internal_url": "http://h:2",
                    "enforce": "dry_run",
                },
            ]
        }
    )
    a, b = catalog.services
    assert not compile_policy(catalog, a).dry_run
    assert compile_policy(catalog, b).dry_run
