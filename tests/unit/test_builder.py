"""Incremental builds give what a build from scratch gives: byte-identical resources and the
same versions, or the same problems, on random sequences of edits; and they do rebuild only
what changed."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.translation import build_snapshot
from xds_server import typeurls
from xds_server.builder import SnapshotBuilder
from xds_server.catalog import CatalogError, parse_catalog, parse_catalog_cached
from xds_server.resources.common import ObservabilityOptions, TracingOptions
from xds_server.snapshot import Snapshot
from xds_server.translate import AuthzOptions, Options

OPTIONS = Options(listener_address="127.0.0.1", listener_port=10000)
# Every option that changes what a service's resources become, so the cache keys must hold it.
OPTION_SETS = [
    OPTIONS,
    Options(authz=AuthzOptions(transport="grpc")),
    Options(regions=("eu-west", "eu-central")),
    Options(observability=ObservabilityOptions(tracing=TracingOptions("collector", 4317))),
]
NAMES = ["a", "b", "c", "d", "e", "orders", "orders-admin"]
ACTIONS = ["read", "write", "delete", "*"]

urls = st.one_of(
    st.sampled_from(["http://127.0.0.1:8001", "http://10.0.0.2:80", "https://api.example.com:443"]),
    st.lists(
        st.sampled_from(["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://[::1]:9"]),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(["http://db.internal:5432", "ftp://x:1"]),  # DNS; a bad scheme
)
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "timeout_ms": st.one_of(st.integers(1, 60_000), st.sampled_from([0, True, 1.0])),
    "connect_timeout_ms": st.integers(1, 5_000),
    "cacheable": st.one_of(st.booleans(), st.just(1)),
    "public": st.booleans(),
    "rbac_required": st.booleans(),
    "tenant_scope": st.sampled_from(["global", "tenant", "nobody"]),
    "healthcheck_endpoint": st.sampled_from(["/healthz", "/h/ready"]),
    "retry_policy": st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {},
            optional={
                "max_retries": st.integers(0, 11),
                "retry_on": st.lists(
                    st.sampled_from(["5xx", "reset", "gateway-error"]), min_size=1, max_size=2
                ),
                "per_try_timeout_ms": st.integers(1, 70_000),
            },
        ),
    ),
    "rate_limit": st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"requests_per_minute": st.integers(1, 1000)}, optional={"burst": st.integers(0, 9)}
        ),
    ),
    "tenant_upstreams": st.dictionaries(
        st.sampled_from(["acme", "globex"]), st.sampled_from(["http://127.0.0.1:9001"]), max_size=2
    ),
    "circuit_breaker": st.fixed_dictionaries({}, optional={"max_connections": st.integers(1, 99)}),
    "outlier_detection": st.fixed_dictionaries({}, optional={"consecutive_5xx": st.integers(1, 9)}),
    # Under some of the base paths above (elsewhere: refused), sometimes overlapping.
    "endpoints": st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["x", "y"]),
                "path": st.sampled_from(["/orders/x", "/shared/y", "/a/{id}/z", "/b/v2/w"]),
            },
            optional={
                "match": st.sampled_from(["prefix", "exact", "template"]),
                "methods": st.sampled_from([["POST"], ["GET", "POST"]]),
                "roles": st.just(["admin"]),
                "rate_limit": st.one_of(st.none(), st.just({"requests_per_minute": 5})),
                "cacheable": st.booleans(),
            },
        ),
        max_size=2,
    ),
}


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(NAMES))
    svc: dict[str, Any] = {
        "service_name": name,
        "base_path": draw(st.sampled_from([f"/{name}", f"/{name}/v2", "/", "/shared"])),
        "internal_url": draw(urls),
    }
    for field in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), unique=True, max_size=5)):
        svc[field] = draw(OPTIONAL[field])
    return svc


roles = st.dictionaries(
    st.sampled_from(["admin", "reader", "ops"]),
    st.lists(
        st.one_of(
            st.just("*"),
            st.builds(
                lambda s, a: f"{s}:{a}", st.sampled_from([*NAMES, "*"]), st.sampled_from(ACTIONS)
            ),
        ),
        max_size=3,
    ),
    max_size=3,
)


def edit(draw: Callable[[st.SearchStrategy[Any]], Any], data: dict[str, Any]) -> None:
    """One edit, as an operator makes it (sometimes a bad one)."""
    svcs: list[dict[str, Any]] = data["services"]
    kind = draw(
        st.sampled_from(["add", "remove", "field", "replace", "reorder", "roles", "catalog-wide"])
    )
    if kind == "add" or not svcs:
        svcs.insert(draw(st.integers(0, len(svcs))), draw(services()))
    elif kind == "remove":
        svcs.pop(draw(st.integers(0, len(svcs) - 1)))
    elif kind == "field":
        field = draw(st.sampled_from(sorted(OPTIONAL)))
        svcs[draw(st.integers(0, len(svcs) - 1))][field] = draw(OPTIONAL[field])
    elif kind == "replace":
        svcs[draw(st.integers(0, len(svcs) - 1))] = draw(services())
    elif kind == "reorder":
        svcs.reverse()
    elif kind == "catalog-wide":
        # Fields of one service that change other services' resources too.
        field = draw(st.sampled_from(["cacheable", "tenant_upstreams", "endpoints"]))
        svcs[draw(st.integers(0, len(svcs) - 1))][field] = draw(OPTIONAL[field])
    else:
        data["roles"] = draw(roles)


def reference(data: dict[str, Any], options: Options = OPTIONS) -> Snapshot | tuple[str, ...]:
    """The plain path: whole-catalog validation, then translation of everything."""
    try:
        snapshot = build_snapshot(parse_catalog(data), options)
    except CatalogError as err:
        return tuple(str(p) for p in err.problems)
    return (snapshot.consistent() and tuple(snapshot.consistent())) or snapshot


def built(builder: SnapshotBuilder, data: dict[str, Any]) -> Snapshot | tuple[str, ...]:
    try:
        snapshot, _ = builder(json.dumps(data).encode(), "")
    except CatalogError as err:
        return tuple(str(p) for p in err.problems)
    return snapshot


def same(a: Snapshot | tuple[str, ...], b: Snapshot | tuple[str, ...]) -> None:
    if isinstance(a, tuple) or isinstance(b, tuple):
        assert a == b
        return
    assert a.version == b.version
    assert dict(a.versions) == dict(b.versions)
    for type_url in typeurls.PUSH_ORDER:
        mine = {
            n: (r.version, r.packed.SerializeToString()) for n, r in a.resources[type_url].items()
        }
        theirs = {
            n: (r.version, r.packed.SerializeToString()) for n, r in b.resources[type_url].items()
        }
        assert mine == theirs, typeurls.SHORT_NAMES[type_url]


@pytest.mark.parametrize("options", OPTION_SETS, ids=["default", "grpc", "regions", "traced"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_incremental_builds_equal_builds_from_scratch_on_random_edits(
    options: Options, data: st.DataObject
) -> None:
    catalog = {"services": data.draw(st.lists(services(), max_size=5)), "roles": data.draw(roles)}
    incremental = SnapshotBuilder(options)
    for _ in range(data.draw(st.integers(1, 8))):
        expected = reference(catalog, options)
        same(built(incremental, catalog), expected)
        same(built(SnapshotBuilder(options), catalog), expected)
        edit(data.draw, catalog)


def catalog_of(n: int) -> dict[str, Any]:
    return {
        "services": [
            {
                "service_name": f"s{i}",
                "base_path": f"/s{i}",
                "internal_url": f"http://10.0.0.{i}:80",
            }
            for i in range(n)
        ],
        "roles": {"admin": ["*"]},
    }


def test_a_one_service_edit_rebuilds_that_service_only() -> None:
    data = catalog_of(5)
    builder = SnapshotBuilder(OPTIONS)
    before, _ = builder(json.dumps(data).encode(), "")
    data["services"][2]["connect_timeout_ms"] = 2500
    after, _ = builder(json.dumps(data).encode(), "")
    clusters_before, clusters_after = (
        before.resources[typeurls.CLUSTER],
        after.resources[typeurls.CLUSTER],
    )
    assert clusters_after["s2"] is not clusters_before["s2"]
    assert all(clusters_after[n] is clusters_before[n] for n in ("s0", "s1", "s3", "s4"))
    endpoints_before, endpoints_after = (
        before.resources[typeurls.ENDPOINT],
        after.resources[typeurls.ENDPOINT],
    )
    assert all(endpoints_after[n] is endpoints_before[n] for n in ("s0", "s1", "s3", "s4"))
    assert endpoints_after["s2"].version == endpoints_before["s2"].version
    routes = before.resources[typeurls.ROUTE]["ingress_routes"]
    assert after.resources[typeurls.ROUTE]["ingress_routes"] is routes  # not even reassembled


def test_validation_reuses_the_services_whose_json_did_not_change() -> None:
    data = catalog_of(3)
    cache: dict[bytes, Any] = {}
    first, _ = parse_catalog_cached(copy.deepcopy(data), "", cache)
    data["services"][1]["timeout_ms"] = 5
    second, _ = parse_catalog_cached(copy.deepcopy(data), "", cache)
    assert second.services[0] is first.services[0] and second.services[2] is first.services[2]
    assert second.services[1] is not first.services[1]
    assert len(cache) == 3  # only what this catalog uses


@pytest.mark.parametrize("value", [True, 1.0])
def test_a_value_equal_to_a_valid_one_but_of_another_type_is_not_taken_from_the_cache(
    value: object,
) -> None:
    # 1 == True == 1.0 in Python; only the integer is a valid timeout.
    data = catalog_of(1)
    data["services"][0]["timeout_ms"] = 1
    builder = SnapshotBuilder(OPTIONS)
    builder(json.dumps(data).encode(), "")
    data["services"][0]["timeout_ms"] = value
    with pytest.raises(CatalogError) as caught:
        builder(json.dumps(data).encode(), "")
    assert [p.path for p in caught.value.problems] == ["services[0].timeout_ms"]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["services"][1].update(cacheable=True),  # the cache filter appears
        lambda d: d["roles"].update(ops=["s0:read"]),  # s0's policy changes
    ],
    ids=["another-service-cacheable", "roles"],
)
def test_routes_follow_what_they_depend_on_beyond_their_service(change: Any) -> None:
    data = catalog_of(2)
    builder = SnapshotBuilder(OPTIONS)
    builder(json.dumps(data).encode(), "")
    change(data)
    after, _ = builder(json.dumps(data).encode(), "")
    same(after, reference(data))
