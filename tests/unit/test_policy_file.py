"""The policy file (`ext_authz.policy_file`): its format, how a check's route is found, and
`sidecar policy`'s compiler and Envoy configuration check."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from ext_authz.core import Authorizer
from ext_authz.decision import CheckInput
from ext_authz.policy_file import PolicyFileError, PolicyTable, document, load, parse
from ext_authz.ratelimit import MemoryLimiter
from sidecar import policy_cmd
from sidecar_shared.contract import POLICY_KEY as POLICY_KEY_NAME
from sidecar_shared.contract import PolicyError, RoutePolicy, encode
from tests.support import policies, tokens
from tests.support.authorizers import key_source, make_verifier
from tests.support.policies import POLICY_KEY
from tests.support.tokens import TEST_SECRET
from xds_server.catalog import load_catalog

SAMPLE = Path(__file__).parents[2] / "service_catalog.json"


def route(service: str, path: str, match: str = "prefix", **extra: Any) -> dict[str, Any]:
    policy = json.loads(encode(RoutePolicy(service=service)))
    return {"service": service, "match": match, "path": path, "policy": policy, **extra}


def table(*routes: dict[str, Any]) -> PolicyTable:
    return parse(document(routes), "policies.json")


def service_of(t: PolicyTable, method: str, path: str, **context: str) -> str:
    return t.find(context, method, path).service


def test_the_first_route_that_matches_decides() -> None:
    t = table(
        route("export", "/orders/{id}/export", "template", methods=["POST"]),
        route("search", "/orders/search", "exact"),
        route("orders", "/orders"),
        route("root", "/"),
    )
    assert service_of(t, "POST", "/orders/7/export") == "export"
    assert service_of(t, "GET", "/orders/7/export") == "orders"  # not its method
    assert service_of(t, "POST", "/orders//export") == "orders"  # a variable is never empty
    assert service_of(t, "GET", "/orders/search?q=1") == "search"  # the query is left out
    assert service_of(t, "GET", "/orders/search/x") == "orders"
    assert service_of(t, "GET", "/orders") == "orders"
    assert service_of(t, "GET", "/ordersx") == "root"  # a prefix ends at a '/'


def test_a_service_named_by_the_route_limits_the_search() -> None:
    t = table(route("admin", "/orders/admin"), route("orders", "/orders"))
    assert service_of(t, "GET", "/orders/admin/x", service="orders") == "orders"
    with pytest.raises(PolicyError, match="does not have"):
        t.find({"service": "billing"}, "GET", "/orders")
    with pytest.raises(PolicyError, match="of service 'admin'"):
        t.find({"service": "admin"}, "GET", "/orders/1")


def test_nothing_matching_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match=r"no route of the policy file policies\.json"):
        table(route("orders", "/orders")).find({}, "GET", "/other")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a JSON object"),
        ({"routes": []}, "sidecar_policy_file must be 1"),
        ({"sidecar_policy_file": 2, "routes": []}, "not 2"),
        ({"sidecar_policy_file": 1, "routes": [], "x": 1}, "unknown field"),
        (document([]), "non-empty list"),
        (document([{**route("a", "/a"), "typo": 1}]), r"routes\[0\]: unknown field"),
        (document([route("a", "a")]), r"routes\[0\].path"),
        (document([route("a", "/a/{id}")]), "need match: template"),
        (document([route("a", "/a", "glob")]), r"routes\[0\].match"),
        (document([route("a", "/a", methods=["FETCH"])]), r"routes\[0\].methods"),
        (document([{**route("a", "/a"), "policy": {"v": 2}}]), "unknown policy version"),
        (document([{**route("a", "/a"), "service": "b"}]), "names service 'a', not 'b'"),
    ],
)
def test_a_file_that_cannot_be_read_one_way_is_refused(data: object, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message):
        parse(data, "p.json")


def test_an_unreadable_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{")
    with pytest.raises(PolicyFileError, match=r"p\.json: not JSON"):
        load(path)


def test_the_sample_catalog_compiles_to_a_file_ext_authz_reads() -> None:
    catalog = load_catalog(SAMPLE)
    t = parse(document(policy_cmd.file_routes(catalog)))
    # The admin service (under /orders) before orders; orders' endpoints before orders.
    assert service_of(t, "GET", "/orders/admin/x") == "admin"
    export = t.find({}, "POST", "/orders/7/export")
    assert export.limit_name == "orders.export"
    assert t.find({}, "GET", "/orders/7/export").limit_name is None
    refunds = t.find({}, "GET", "/orders/refunds/1")
    assert refunds.allowed_roles["read"] == {"admin", "support"}
    assert service_of(t, "GET", "/catalog/v2/items") == "catalog"


PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"


def test_a_per_route_http_service_without_server_uri_is_found() -> None:
    config = {
        "routes": [
            {
                "match": {"prefix": "/"},
                "typed_per_filter_config": {
                    "envoy.filters.http.ext_authz": {
                        "@type": PER_ROUTE,
                        "check_settings": {"http_service": {"path_prefix": "/sidecar-check"}},
                    }
                },
            }
        ]
    }
    [problem] = policy_cmd.check_envoy_config(config)
    assert problem.startswith("routes[0].typed_per_filter_config.envoy.filters.http.ext_authz")
    assert "no server_uri" in problem


def test_signed_per_route_settings_are_complete() -> None:
    catalog = load_catalog(SAMPLE)
    out = policy_cmd.per_route_settings(catalog, "orders", "http", b"k" * 32)
    assert policy_cmd.check_envoy_config(out) == []
    assert [r["name"] for r in out["routes"]][-1] == "orders"


def checker(t: PolicyTable | None) -> Authorizer:
    keys = key_source(secret=TEST_SECRET)
    return Authorizer(
        make_verifier(keys, time.time),
        MemoryLimiter(),
        [],
        logging.getLogger("test"),
        policy_keys=[POLICY_KEY],
        policy_table=t,
    )


def check(authorizer: Authorizer, path: str, policy: str | None = None) -> tuple[int, str]:
    context = {} if policy is None else {POLICY_KEY_NAME: policy}
    request = CheckInput("GET", path, tokens.bearer(roles=["viewer"]), context)
    outcome = authorizer.check(request)
    return outcome.status, outcome.reason


def test_the_file_decides_only_checks_without_a_policy_of_their_own() -> None:
    viewer_ok = {"service": "orders", "rbac": True, "roles": {"read": ["viewer"]}}
    t = table(
        {**route("orders", "/orders"), "policy": {**route("orders", "/")["policy"], **viewer_ok}}
    )
    authorizer = checker(t)
    assert check(authorizer, "/orders/1") == (200, "ok")
    assert check(authorizer, "/other") == (403, "no_policy")
    # A policy the route carries decides (signed), or is refused: never the file instead.
    closed = RoutePolicy(service="orders", allowed_roles={"read": frozenset({"admin"})})
    assert check(authorizer, "/orders/1", policies.encode(closed)) == (403, "role_not_allowed")
    assert check(authorizer, "/orders/1", encode(closed)) == (403, "policy_unauthenticated")


def test_without_a_file_a_check_without_a_policy_is_no_policy() -> None:
    assert check(checker(None), "/orders/1") == (403, "no_policy")


def test_an_allow_the_file_decided_is_never_answered_for_another_path() -> None:
    # The fast path keys prepared allows by the route's policy string: with the policy file
    # every route's is empty, so an allow on one path must not answer another.
    viewer_ok = {"service": "orders", "rbac": True, "roles": {"read": ["viewer"]}}
    t = table(
        {**route("orders", "/orders"), "policy": {**route("orders", "/")["policy"], **viewer_ok}},
        route("admin", "/admin"),
    )
    authorizer = checker(t)
    headers = {**tokens.bearer(roles=["viewer"]), "x-request-id": "r1"}
    for _ in range(3):
        allowed = authorizer.check(CheckInput("GET", "/orders/1", headers, {}))
        assert allowed.status == 200
    denied = authorizer.check(CheckInput("GET", "/admin/users", headers, {}))
    assert (denied.status, denied.reason) == (403, "role_not_allowed")
    assert authorizer.check(CheckInput("GET", "/other", headers, {})).reason == "no_policy"
