"""Generated catalogs, at and beyond every edge of the schema: each one is either refused with
errors that name a JSON path, or translated into resources that Envoy itself accepts.

CI runs a few examples;
`SIDECAR_FUZZ_EXAMPLES=500 ./dev test tests/integration/test_catalog_fuzz.py` runs a larger
search on demand.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.envoy import envoy_validate, static_bootstrap
from tests.support.translation import build_snapshot
from xds_server.catalog import RETRY_CONDITIONS, CatalogError, parse_catalog
from xds_server.translate import Options

EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "25"))

_EDGES = [-1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63, 2**64]


def mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` 31 times in 32, else `odd`: a catalog has some 30 fields, so about half of the
    generated catalogs stay valid and reach Envoy."""
    # sampled_from draws uniformly (integers() would favour its edges) and shrinks to `good`.
    return st.sampled_from([good] * 31 + [odd]).flatmap(lambda chosen: chosen)


def number(low: int, high: int) -> st.SearchStrategy[int]:
    """Inside [low, high], often right at an edge; rarely just past it, or wild."""
    return mostly(
        st.one_of(st.integers(low, high), st.sampled_from([low, high])),
        st.sampled_from([low - 1, high + 1, *_EDGES]),
    )


names = mostly(
    st.from_regex(r"\A[a-z0-9]([a-z0-9_-]{0,10}[a-z0-9])?\Z"),
    st.sampled_from(["", "UPPER", "a" * 63, "a" * 64, "a.b", "-x"]),
)
segment = st.text(alphabet="abcXYZ019._~-%:@!$&'()*+,;=", min_size=1, max_size=12)
paths = mostly(
    st.lists(segment, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["", "x", "/a//b", "/a?b", "/a#b", "/ a", "/" + "p" * 2000, "/\u00e9"]),
)
hosts = mostly(
    st.one_of(
        st.sampled_from(["127.0.0.1", "10.0.0.5", "[::1]", "localhost", "orders.internal"]),
        st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,8}){0,3}\Z"),
    ),
    st.one_of(
        st.integers(1, 400).map(lambda n: "h" * n),
        st.sampled_from(["a_b", "xn--caf-dma", "-bad", "256.1.1.1", "[fe80::1%eth0]"]),
    ),
)
urls = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}:{port}",
    mostly(st.sampled_from(["http", "https"]), st.just("ftp")),
    hosts,
    mostly(st.integers(1, 65535), st.sampled_from([0, 65536, 99999])),
)
endpoints = st.fixed_dictionaries(
    {"url": urls},
    optional={
        "weight": number(0, 10_000),
        "region": mostly(st.sampled_from(["eu-west", "us-east"]), st.just("bad region")),
    },
)
url_field = st.one_of(urls, st.lists(st.one_of(urls, endpoints), min_size=1, max_size=3))


def optional(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


retry_policies = optional(
    {
        "max_retries": number(0, 10),
        "retry_on": st.lists(
            st.sampled_from(sorted(RETRY_CONDITIONS)), min_size=1, max_size=4, unique=True
        ),
        "per_try_timeout_ms": number(1, 3_600_000),
        "retry_non_idempotent": st.booleans(),
        "backoff_base_ms": number(1, 60_000),
        "backoff_max_ms": number(1, 300_000),
    }
)
rate_limits = st.builds(
    lambda unit, n, extra: {unit: n, **extra},
    st.sampled_from(["requests_per_second", "requests_per_minute", "requests_per_hour"]),
    number(1, 1_000_000_000),
    optional({"burst": number(0, 1_000_000_000)}),
)
services = st.fixed_dictionaries(
    {"service_name": names, "base_path": paths, "internal_url": url_field},
    optional={
        "healthcheck_endpoint": st.one_of(st.none(), paths),
        "timeout_ms": number(1, 3_600_000),
        "tenant_scope": mostly(st.sampled_from(["global", "tenant"]), st.just("other")),
        "cacheable": st.booleans(),
        "retry_policy": st.one_of(st.none(), retry_policies),
        "rbac_required": st.booleans(),
        "rate_limit": st.one_of(st.none(), rate_limits),
        "public": st.booleans(),
        "connect_timeout_ms": number(1, 60_000),
        "tenant_upstreams": st.dictionaries(
            mostly(st.sampled_from(["acme", "globex"]), st.sampled_from(["bad tenant", ""])),
            url_field,
            max_size=2,
        ),
        "health_check": optional(
            {
                "interval_ms": number(100, 300_000),
                "timeout_ms": number(10, 60_000),
                "healthy_threshold": number(1, 100),
                "unhealthy_threshold": number(1, 100),
            }
        ),
        "outlier_detection": optional(
            {
                "consecutive_5xx": number(1, 1000),
                "consecutive_gateway_failure": number(1, 1000),
                "interval_ms": number(100, 3_600_000),
                "base_ejection_time_ms": number(100, 3_600_000),
                "max_ejection_percent": number(0, 100),
            }
        ),
        "protocol": mostly(st.sampled_from(["http1", "http2", "grpc"]), st.just("http3")),
        "websocket": st.booleans(),
        "versions": st.dictionaries(
            mostly(
                st.sampled_from(["v2", "2024-01", "beta.1"]), st.sampled_from(["", "a/b", ".."])
            ),
            st.fixed_dictionaries({"internal_url": url_field}),
            max_size=2,
        ),
        "version_header": mostly(st.just("x-api-version"), st.sampled_from(["X-Up", "x-user-id"])),
        "circuit_breaker": optional(
            {
                "max_connections": number(1, 2**32 - 1),
                "max_pending_requests": number(1, 2**32 - 1),
                "max_requests": number(1, 2**32 - 1),
                "max_retries": number(0, 2**32 - 1),
            }
        ),
    },
)


@st.composite
def service_endpoint(draw: st.DrawFn, base_path: str) -> dict[str, Any]:
    """An endpoint of a service at `base_path`: mostly a path below it, of a kind that suits
    it (a template when it names a variable), with roles or an action."""
    parts = draw(
        st.lists(
            st.one_of(
                st.text(alphabet="abcXYZ019._~-%:@!$&'()+,;", min_size=1, max_size=8),
                mostly(
                    st.sampled_from(["{id}", "{order_id}"]), st.sampled_from(["{Bad}", "{}", "*"])
                ),
            ),
            min_size=1,
            max_size=3,
        )
    )
    path = draw(mostly(st.just(base_path.rstrip("/") + "/" + "/".join(parts)), paths))
    kinds = ["template"] if "{" in path else ["prefix", "exact"]
    endpoint = {
        "name": draw(names),
        "path": path,
        "match": draw(mostly(st.sampled_from(kinds), st.sampled_from(["prefix", "regex"]))),
    }
    endpoint.update(
        draw(
            optional(
                {
                    "methods": st.lists(
                        mostly(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), st.just("TRACE")),
                        min_size=1,
                        max_size=3,
                        unique=True,
                    ),
                    "rate_limit": st.one_of(st.none(), rate_limits),
                    "timeout_ms": number(1, 3_600_000),
                    "retry_policy": st.one_of(st.none(), retry_policies),
                    "cacheable": st.booleans(),
                }
            )
        )
    )
    who = draw(
        st.one_of(
            st.just({}),
            st.fixed_dictionaries({"action": st.sampled_from(["read", "write", "delete"])}),
            st.fixed_dictionaries(
                {
                    "roles": st.lists(
                        mostly(st.just("admin"), st.just("nosuch")), min_size=1, max_size=1
                    )
                }
            ),
        )
    )
    return {**endpoint, **who}


@st.composite
def catalogs(draw: st.DrawFn) -> dict[str, Any]:
    svcs = draw(
        st.lists(
            services,
            max_size=4,
            unique_by=(
                lambda s: s["service_name"],
                lambda s: s["base_path"].rstrip("/") or "/",
            ),
        )
    )
    for svc in svcs:
        # (`*` and `=` are not in an endpoint's path: such a base path would have none.)
        if not set(svc["base_path"]) & set("*=?# ") and draw(st.booleans()):
            svc["endpoints"] = draw(st.lists(service_endpoint(svc["base_path"]), max_size=3))
    known = [s["service_name"] for s in svcs] or ["x"]
    permission = mostly(
        st.one_of(
            st.sampled_from(["*", "*:read", "*:*"]),
            st.builds(
                lambda svc, action: f"{svc}:{action}",
                st.sampled_from(known),
                st.sampled_from(["read", "write", "delete", "*"]),
            ),
        ),
        st.sampled_from(["bad", "nosuch:read", "x:fly"]),
    )
    roles = draw(st.dictionaries(names, st.lists(permission, max_size=3), max_size=3))
    roles.setdefault("admin", ["*"])
    return {"services": svcs, "roles": roles}


def envoy_accepts(snapshot: Any) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "static.json"
        path.write_text(json.dumps(static_bootstrap(snapshot)))
        result = envoy_validate(path)
    return result.returncode == 0, result.stdout + result.stderr


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(catalogs())
def test_a_generated_catalog_is_refused_with_paths_or_accepted_by_envoy(data: Any) -> None:
    try:
        catalog = parse_catalog(data)
    except CatalogError as err:
        for problem in err.problems:
            assert problem.path.startswith(("services", "roles")), problem
            assert problem.message, problem
        return
    accepted, output = envoy_accepts(build_snapshot(catalog, Options()))
    assert accepted, f"valid catalog rejected by Envoy:\n{json.dumps(data)}\n{output[-2000:]}"
