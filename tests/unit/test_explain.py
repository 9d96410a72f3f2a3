"""`xds_server.explain`: the decision ext_authz would make, step by step, for every reason in
the decision table; the same answer as ext_authz's core gives a check through Envoy's contract;
nothing counted against a limit."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from ext_authz.decision import CheckInput
from sidecar_shared.contract import POLICY_KEY as CONTEXT_POLICY
from sidecar_shared.contract import SERVICE_KEY, encode
from tests.support.authorizers import key_source, make_authorizer, make_verifier
from tests.support.policies import POLICY_KEY
from tests.support.tokens import TEST_SECRET, token
from xds_server.catalog import Catalog, parse_catalog
from xds_server.explain import Explainer, Probe, Trace, match_route
from xds_server.resources.authz import per_route
from xds_server.resources.common import AuthzOptions
from xds_server.resources.routes import routing_order
from xds_server.route_policy import compile_policy

CATALOG: dict[str, Any] = {
    "services": [
        {
            "service_name": "orders",
            "base_path": "/orders",
            "internal_url": "http://127.0.0.1:1",
            "tenant_scope": "tenant",
            "rate_limit": {"requests_per_minute": 1},
            "endpoints": [
                {
                    "name": "export",
                    "path": "/orders/{id}/export",
                    "match": "template",
                    "methods": ["POST"],
                    "roles": ["admin"],
                },
                {
                    "name": "search",
                    "path": "/orders/search",
                    "match": "exact",
                    "methods": ["POST"],
                    "action": "read",
                },
            ],
        },
        {
            "service_name": "reports",
            "base_path": "/reports",
            "internal_url": "http://127.0.0.1:2",
            "enforce": "dry_run",
        },
        {
            "service_name": "open",
            "base_path": "/open",
            "internal_url": "http://127.0.0.1:3",
            "public": True,
            "rbac_required": False,
        },
        {
            "service_name": "counted",
            "base_path": "/counted",
            "internal_url": "http://127.0.0.1:4",
            "public": True,
            "rbac_required": False,
            "rate_limit": {"requests_per_second": 1},
        },
    ],
    "roles": {"admin": ["*"], "customer": ["orders:read", "reports:read"]},
}
CUSTOMER = {"sub": "u1", "roles": ["customer"], "tenant_id": "acme"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return parse_catalog(CATALOG)


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(make_verifier(key_source(TEST_SECRET), time.time))


def explain(explainer: Explainer, catalog: Catalog, method: str, path: str, **kw: Any) -> Trace:
    return explainer.explain(catalog, Probe(method, path, kw.pop("headers", {}), **kw))


def verdicts(trace: Trace) -> dict[str, str]:
    return {s.name: s.verdict for s in trace.steps}


def expired_token() -> str:
    return token(roles=["customer"], ttl_s=-3600)


# (method, path, how the caller is given, status, reason, the step that failed)
TABLE: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
    ("GET", "/orders/42", {"claims": CUSTOMER}, 200, "ok", None),
    ("GET", "/orders/42", {}, 401, "missing_token", "token"),
    ("GET", "/orders/42", {"headers": {"authorization": "Basic eA=="}}, 401, "malformed", "token"),
    ("GET", "/orders/42", {"token": "not.a.jwt"}, 401, "malformed", "token"),
    ("DELETE", "/orders/1", {"claims": CUSTOMER}, 403, "role_not_allowed", "role"),
    ("TRACE", "/orders/1", {"claims": CUSTOMER}, 403, "method_not_allowed", "role"),
    (
        "GET",
        "/orders/1",
        {"claims": {"sub": "u1", "roles": ["customer"]}},
        403,
        "tenant_required",
        "tenant",
    ),
    (
        "GET",
        "/orders/1",
        {"claims": CUSTOMER, "headers": {"x-tenant-id": "globex"}},
        403,
        "tenant_mismatch",
        "tenant",
    ),
    ("POST", "/orders/7/export", {"claims": CUSTOMER}, 403, "role_not_allowed", "role"),
    ("POST", "/orders/search", {"claims": CUSTOMER}, 200, "ok", None),
    ("GET", "/nowhere", {"claims": CUSTOMER}, 404, "no_route", "route"),
    ("GET", "/open/x", {}, 200, "public", None),
    ("GET", "/counted", {}, 200, "public", None),
]


@pytest.mark.parametrize(("method", "path", "who", "status", "reason", "failed"), TABLE)
def test_every_reason_of_the_decision_table_is_explained_with_the_step_that_decided(
    explainer: Explainer,
    catalog: Catalog,
    method: str,
    path: str,
    who: dict[str, Any],
    status: int,
    reason: str,
    failed: str | None,
) -> None:
    trace = explain(explainer, catalog, method, path, **dict(who))
    assert (trace.status, trace.reason) == (status, reason)
    steps = verdicts(trace)
    assert list(steps) == ["route", "policy", "token", "role", "tenant", "limit"]
    if failed is None:
        assert "fail" not in steps.values()
    else:
        assert steps[failed] == "fail"
        after = list(steps)[list(steps).index(failed) + 1 :]
        assert all(steps[name] == "not_reached" for name in after)
        assert all(v in ("pass", "skip") for n, v in steps.items() if n not in [*after, failed])


def test_token_failures_are_the_verifier_s_own_reasons(
    explainer: Explainer, catalog: Catalog
) -> None:
    expired = explain(explainer, catalog, "GET", "/orders/1", token=expired_token())
    forged = explain(
        explainer,
        catalog,
        "GET",
        "/orders/1",
        token=jwt.encode({"sub": "u", "exp": time.time() + 60}, b"x" * 40, algorithm="HS256"),
    )
    assert (expired.status, expired.reason) == (401, "expired")
    assert (forged.status, forged.reason) == (401, "bad_signature")
    assert verdicts(forged)["token"] == "fail"


def test_a_valid_token_is_verified_with_the_key_given(
    explainer: Explainer, catalog: Catalog
) -> None:
    trace = explain(explainer, catalog, "GET", "/orders/1", token=token(roles=["customer"]))
    assert trace.status == 200
    assert "user alice" in next(s.detail for s in trace.steps if s.name == "token")


def test_without_a_key_a_token_cannot_be_explained_but_claims_can(catalog: Catalog) -> None:
    keyless = Explainer()
    assert explain(keyless, catalog, "GET", "/orders/1", token="a.b.c").reason == "no_key_here"
    assert explain(keyless, catalog, "GET", "/orders/1", claims=CUSTOMER).status == 200


def test_explaining_counts_nothing_against_a_limit(explainer: Explainer, catalog: Catalog) -> None:
    # orders allows 1 request a minute per user
    for _ in range(5):
        trace = explain(explainer, catalog, "GET", "/orders/1", claims=CUSTOMER)
        assert trace.status == 200
    limit = next(s for s in trace.steps if s.name == "limit")
    assert limit.verdict == "pass"
    assert "not counted" in limit.detail
    assert "orders" in limit.detail


def test_a_dry_run_service_allows_and_says_what_enforcing_would_answer(
    explainer: Explainer, catalog: Catalog
) -> None:
    trace = explain(explainer, catalog, "DELETE", "/reports/1", claims=CUSTOMER)
    assert (trace.status, trace.would_deny, trace.reason) == (200, 403, "role_not_allowed")
    assert trace.decided == 403
    assert verdicts(trace)["role"] == "fail"
    assert trace.policy is not None and trace.policy.dry_run


def test_too_many_headers_is_the_policy_step(explainer: Explainer, catalog: Catalog) -> None:
    headers = {f"x-h{i}": "v" for i in range(200)}
    trace = explain(explainer, catalog, "GET", "/orders/1", claims=CUSTOMER, headers=headers)
    assert (trace.status, trace.reason) == (431, "too_many_headers")


def test_routes_match_as_the_route_configuration_orders_them(catalog: Catalog) -> None:
    def name(method: str, path: str) -> str | None:
        found = match_route(catalog, method, path)
        if found is None:
            return None
        svc, ep = found
        return svc.service_name + (f".{ep.name}" if ep else "")

    assert name("POST", "/orders/7/export") == "orders.export"
    assert name("GET", "/orders/7/export") == "orders"  # the endpoint names POST only
    assert name("POST", "/orders/search?q=1") == "orders.search"
    assert name("POST", "/orders/search/more") == "orders"  # exact
    assert name("GET", "/ordersx") is None
    assert name("GET", "/orders") == "orders"


@pytest.mark.parametrize(
    ("method", "path", "who"),
    [(m, p, w) for m, p, w, *_ in TABLE if p.startswith(("/orders", "/reports"))],
)
def test_explain_answers_what_ext_authz_answers_for_the_route_s_signed_policy(
    explainer: Explainer, catalog: Catalog, method: str, path: str, who: dict[str, Any]
) -> None:
    """The same check through ext_authz's core as Envoy sends it (policy signed with the
    deployment's key in the route's context): the same status and reason."""
    trace = explain(explainer, catalog, method, path, **dict(who))
    found = match_route(catalog, method, path)
    assert found is not None
    svc, ep = found

    route = per_route(
        AuthzOptions(policy_key=POLICY_KEY, transport="grpc"),
        svc.service_name,
        encode(compile_policy(catalog, svc, ep)),
    )
    context = dict(route.check_settings.context_extensions)
    assert set(context) == {SERVICE_KEY, CONTEXT_POLICY}
    headers = dict(who.get("headers", {}))
    if "claims" in who:
        claims = {**who["claims"], "exp": int(time.time()) + 600}
        headers["authorization"] = "Bearer " + jwt.encode(claims, TEST_SECRET, algorithm="HS256")
    elif "token" in who:
        headers["authorization"] = f"Bearer {who['token']}"
    wired = make_authorizer(make_verifier(key_source(TEST_SECRET), time.time), time.time)
    outcome = wired.authorizer.check(CheckInput(method, path, headers, context, "127.0.0.1"))
    assert (outcome.status, outcome.reason) == (trace.status, trace.reason)
    assert outcome.would_deny == trace.would_deny


def test_the_trace_reads_as_json(explainer: Explainer, catalog: Catalog) -> None:
    data = explain(explainer, catalog, "GET", "/orders/1", claims=CUSTOMER).to_json()
    assert json.loads(json.dumps(data))["policy"]["service"] == "orders"
    assert data["status"] == 200


def test_the_longest_base_path_holding_the_path_wins_as_in_the_route_configuration() -> None:
    nested = parse_catalog(
        {
            "services": [
                {"service_name": name, "base_path": path, "internal_url": "http://h:1"}
                for name, path in [
                    ("root", "/"),
                    ("a", "/a"),
                    ("ab", "/a/b"),
                    ("abc", "/a/b/c/"),
                    ("x", "/x-y"),
                ]
            ]
        }
    )
    order = routing_order(nested.services)
    paths = ["/", "/a", "/a/", "/ab", "/a/b", "/a/bc", "/a/b/c", "/a/b/c/d?q=/x", "/x-y/1", "/x"]
    for path in paths:
        first = next(
            s.service_name
            for s in order
            if s.route_prefix == "/"
            or path.split("?")[0] == s.route_prefix
            or path.split("?")[0].startswith(s.route_prefix + "/")
        )
        found = match_route(nested, "GET", path)
        assert found is not None
        assert found[0].service_name == first, path
