"""Endpoints inside a service: the matching rule, validation, each endpoint's policy and routes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sidecar_shared.contract import Limit, RoutePolicy, decode, encode
from tests.support import authz_config
from xds_server.catalog import (
    CatalogError,
    ServiceEndpoint,
    endpoint_rank,
    endpoints_in_order,
    endpoints_overlap,
    parse_catalog,
)
from xds_server.resources.retries import RETRY_FILTER, needs_retry_filter
from xds_server.resources.routes import endpoint_lookalikes, route_configuration
from xds_server.route_policy import compile_policy

pytestmark = pytest.mark.unit

URL = "http://127.0.0.1:8001"
ROLES = {"admin": ["*"], "reader": ["orders:read"], "writer": ["orders:read", "orders:write"]}


def orders(*endpoints: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "services": [
            {
                "service_name": "orders",
                "base_path": "/orders",
                "internal_url": URL,
                "endpoints": list(endpoints),
                **fields,
            }
        ],
        "roles": ROLES,
    }


def ep(path: str, match: str = "prefix", name: str = "e", **fields: Any) -> ServiceEndpoint:
    return ServiceEndpoint.model_validate({"name": name, "path": path, "match": match, **fields})


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    return [str(p) for p in caught.value.problems]


# -- the matching rule --------------------------------------------------------------------------


def test_the_most_specific_endpoint_comes_first() -> None:
    given = [
        ep("/orders", name="all-posts", methods=["POST"]),
        ep("/orders/a", name="a"),
        ep("/orders/{id}/export", "template", name="export"),
        ep("/orders/a/b", name="ab"),
        ep("/orders/{id}", "template", name="one"),
        ep("/orders/a/export", "exact", name="exact"),
        ep("/orders/a", name="a-post", methods=["POST"]),
    ]
    order = [e.name for e in endpoints_in_order(given)]
    # exact, then templates by fixed segments, then prefixes by length, methods before none.
    assert order == ["exact", "export", "one", "ab", "a-post", "a", "all-posts"]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (ep("/orders/x"), ep("/orders/x"), True),
        (ep("/orders/x", methods=["GET", "POST"]), ep("/orders/x", methods=["POST"]), True),
        (ep("/orders/x", methods=["GET"]), ep("/orders/x", methods=["POST"]), False),
        (ep("/orders/x"), ep("/orders/y"), False),
        (ep("/orders/{a}/x", "template"), ep("/orders/y/{b}", "template"), True),
        (ep("/orders/{a}/x", "template"), ep("/orders/{b}/y", "template"), False),
        (ep("/orders/x", "exact"), ep("/orders/x", "exact"), True),
    ],
)
def test_two_endpoints_of_equal_rank_overlap_when_a_request_matches_both(
    a: ServiceEndpoint, b: ServiceEndpoint, overlap: bool
) -> None:
    assert endpoint_rank(a) == endpoint_rank(b)
    assert endpoints_overlap(a, b) is overlap


def test_overlapping_endpoints_of_equal_rank_are_refused_with_both_paths() -> None:
    found = problems(
        orders(
            {"name": "a", "path": "/orders/{id}/x", "match": "template"},
            {"name": "b", "path": "/orders/tools"},
            {"name": "c", "path": "/orders/y/{z}", "match": "template"},
        )
    )
    assert found == [
        "services[0].endpoints[2]: overlaps services[0].endpoints[0] and is as specific (both "
        "match some request): make one more specific or give them different methods"
    ]


def test_endpoints_of_different_rank_on_one_path_are_allowed() -> None:
    catalog = parse_catalog(
        orders(
            {"name": "prefix", "path": "/orders/x"},
            {"name": "exact", "path": "/orders/x", "match": "exact"},
            {"name": "post", "path": "/orders/x", "methods": ["POST"]},
        )
    )
    assert [e.name for e in endpoints_in_order(catalog.services[0].endpoints)] == [
        "exact",
        "post",
        "prefix",
    ]


@pytest.mark.parametrize(
    ("endpoint", "fields", "where", "words"),
    [
        ({"path": "/orders/{id}"}, {}, "path", "needs match 'template'"),
        ({"path": "/orders/{a}/{a}", "match": "template"}, {}, "path", "names a variable twice"),
        ({"path": "/orders/x", "roles": ["admin"]}, {"public": True}, "roles", "checks no roles"),
        (
            {"path": "/orders/x", "action": "read"},
            {"rbac_required": False},
            "action",
            "checks no roles",
        ),
        ({"path": "/orders/x", "roles": ["admin"], "action": "read"}, {}, "action", "not both"),
        ({"path": "/orders/x", "timeout_ms": 100}, {}, "timeout_ms", "above the endpoint's"),
        (
            {"path": "/orders/x", "cacheable": True},
            {"tenant_scope": "tenant"},
            "cacheable",
            "tenant_scope 'tenant'",
        ),
        (
            {"path": "/orders/x", "name": "x", "cacheable": True},
            {"protocol": "grpc"},
            "cacheable",
            "gRPC",
        ),
        (
            {"path": "/orders/x", "retry_policy": {"retry_on": ["unavailable"]}},
            {"protocol": "grpc", "retry_policy": None},
            "retry_policy.retry_on",
            "retries nothing unless retry_non_idempotent",
        ),
    ],
)
def test_an_endpoint_that_makes_no_sense_is_refused_at_its_field(
    endpoint: dict[str, Any], fields: dict[str, Any], where: str, words: str
) -> None:
    retry = {"retry_policy": {"per_try_timeout_ms": 500}}
    found = problems(orders({"name": "e", **endpoint}, **{**retry, **fields}))
    assert any(p.startswith(f"services[0].endpoints[0].{where}: ") and words in p for p in found), (
        found
    )


@pytest.mark.parametrize("name", ["acme", "too_large"])
def test_an_endpoint_name_may_not_be_another_route_of_its_service(name: str) -> None:
    found = problems(orders({"name": name, "path": "/orders/x"}, tenant_upstreams={"acme": URL}))
    assert found == [
        f"services[0].endpoints[0].name: orders.{name} already names another of the service's "
        "routes (a tenant upstream's, or the body limit's)"
    ]


def test_endpoint_names_are_unique_in_their_service() -> None:
    found = problems(orders({"name": "a", "path": "/orders/x"}, {"name": "a", "path": "/orders/y"}))
    assert found == [
        "services[0].endpoints[1].name: duplicate endpoint name 'a' (first used by "
        "services[0].endpoints[0])"
    ]


# -- policies ------------------------------------------------------------------------------------


def test_an_endpoint_policy_overrides_only_what_the_endpoint_names() -> None:
    catalog = parse_catalog(
        orders(
            {"name": "export", "path": "/orders/x", "rate_limit": {"requests_per_minute": 5}},
            {"name": "tools", "path": "/orders/tools", "roles": ["admin"]},
            {"name": "search", "path": "/orders/search", "action": "read"},
            {"name": "free", "path": "/orders/free", "rate_limit": None},
            {"name": "slow", "path": "/orders/slow", "timeout_ms": 60_000},
            rate_limit={"requests_per_minute": 100, "burst": 10},
        )
    )
    svc = catalog.services[0]
    export, tools, search, free, slow = svc.endpoints
    service = compile_policy(catalog, svc)
    assert service.limit_name is None and service.limit_scope == "orders"
    own = compile_policy(catalog, svc, export)
    assert (own.rate_limit, own.limit_scope) == (Limit(5, 60), "orders.export")
    assert own.allowed_roles == service.allowed_roles
    assert compile_policy(catalog, svc, tools).allowed_roles == {
        a: frozenset({"admin"}) for a in ("read", "write", "delete")
    }
    readers = service.allowed_roles["read"]
    assert compile_policy(catalog, svc, search).allowed_roles == {
        a: readers for a in ("read", "write", "delete")
    }
    assert compile_policy(catalog, svc, free).rate_limit is None
    # No limit of its own: the service's limit and its counter.
    shared = compile_policy(catalog, svc, slow)
    assert (shared.rate_limit, shared.limit_scope) == (service.rate_limit, "orders")


def test_a_policy_without_a_limit_name_encodes_as_before_and_round_trips() -> None:
    plain = RoutePolicy(service="orders", rate_limit=Limit(5, 60))
    assert "limit_name" not in encode(plain)
    assert decode(encode(plain)) == plain
    named = RoutePolicy(service="orders", rate_limit=Limit(5, 60), limit_name="orders.export")
    assert decode(encode(named)) == named
    assert decode(encode(named)).limit_scope == "orders.export"


# -- routes --------------------------------------------------------------------------------------


def test_each_endpoint_has_its_route_and_signed_policy_before_the_service_catch_all() -> None:
    catalog = parse_catalog(
        orders(
            {"name": "tools", "path": "/orders/tools", "roles": ["admin"]},
            {
                "name": "export",
                "path": "/orders/{id}/export",
                "match": "template",
                "methods": ["POST", "PUT"],
                "rate_limit": {"requests_per_minute": 5},
                "timeout_ms": 2_000,
            },
            tenant_upstreams={"acme": "http://127.0.0.1:8002"},
        )
    )
    routes = route_configuration(catalog).virtual_hosts[0].routes
    names = [r.name for r in routes]
    assert names == [
        "orders.export.acme",
        "orders.export",
        "orders.tools.acme",
        "orders.tools",
        "orders.endpoint_lookalike.0",
        "orders.endpoint_lookalike.1",
        "orders.acme",
        "orders",
    ]
    export = routes[1]
    assert export.match.path_match_policy.name == "envoy.path.match.uri_template"
    assert b"/orders/{id}/export" in export.match.path_match_policy.typed_config.value
    (method,) = export.match.headers
    assert (method.name, method.string_match.safe_regex.regex) == (":method", "^(?:POST|PUT)$")
    assert export.route.timeout.ToMilliseconds() == 2_000
    assert routes[0].route.cluster == routes[6].route.cluster != "orders"  # acme's upstream
    assert routes[1].route.cluster == "orders"
    assert routes[3].match.path_separated_prefix == "/orders/tools"
    policies = {r.name: decode(authz_config.route_policy(r)) for r in routes if r.route.cluster}
    assert policies["orders.export"].limit_scope == "orders.export"
    assert policies["orders.export.acme"] == policies["orders.export"]
    assert policies["orders.tools"].allowed_roles["read"] == frozenset({"admin"})
    assert policies["orders"].limit_scope == "orders"


TOOL_LOOKALIKES = (
    "/orders/TOOLS",
    "/orders/Tools/purge",
    "/orders/tools;x",
    "/orders/tools;jsessionid=1/purge",
    "/orders/tools.",
    "/orders/tools./purge",
    "/orders/tools%2e",
    "/orders/tools%252e",
    "/orders/tools%c0%ae",
    "/orders/tools%20",
)


def guards(*endpoints: dict[str, Any], **fields: Any) -> list[tuple[str, str]]:
    return endpoint_lookalikes(parse_catalog(orders(*endpoints, **fields)).services[0])


def refused(pairs: list[tuple[str, str]], path: str) -> bool:
    """Whether a guard route refuses `path` (RE2 and Python agree on these expressions)."""
    return any(re.fullmatch(guard, path) and not re.fullmatch(own, path) for guard, own in pairs)


@pytest.mark.parametrize("path", TOOL_LOOKALIKES)
def test_a_lookalike_of_an_endpoint_path_is_refused(path: str) -> None:
    assert refused(guards({"name": "tools", "path": "/orders/tools", "roles": ["admin"]}), path)


@pytest.mark.parametrize(
    "path",
    ["/orders/tools", "/orders/tools/purge", "/orders/tools?x=1", "/orders/toolsx", "/orders/7"],
)
def test_the_endpoint_path_itself_and_other_paths_pass_the_guard(path: str) -> None:
    assert not refused(
        guards({"name": "tools", "path": "/orders/tools", "methods": ["POST"]}), path
    )


def test_template_and_exact_endpoints_have_guards_of_their_shape() -> None:
    pairs = guards(
        {"name": "export", "path": "/orders/{id}/export", "match": "template"},
        {"name": "search", "path": "/orders/search", "match": "exact"},
    )
    assert refused(pairs, "/orders/7/EXPORT")
    assert refused(pairs, "/orders/7/export;x")
    assert refused(pairs, "/orders/7/export/")  # a trailing '/' of an exact path
    assert refused(pairs, "/orders/search.")
    assert not refused(pairs, "/orders/7/export")
    assert not refused(pairs, "/orders/7/export?format=csv")
    assert not refused(pairs, "/orders/search/7")  # below an exact path: the service's


def test_a_lenient_service_has_no_endpoint_guards() -> None:
    assert guards({"name": "tools", "path": "/orders/tools"}, strict_paths=False) == []


def test_an_endpoint_whose_retries_depend_on_the_method_brings_the_retry_filter() -> None:
    catalog = parse_catalog(
        orders({"name": "r", "path": "/orders/r", "retry_policy": {}}, retry_policy=None)
    )
    assert needs_retry_filter(catalog)
    route = next(
        r for r in route_configuration(catalog).virtual_hosts[0].routes if r.name == "orders.r"
    )
    assert RETRY_FILTER in route.typed_per_filter_config
