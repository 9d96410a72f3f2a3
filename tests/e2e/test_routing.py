"""A real Envoy routes exactly as the catalog says."""

from __future__ import annotations

import pytest

from tests import harness
from tests.conftest import sample_data

pytestmark = pytest.mark.e2e


def served(envoy: harness.Envoy, path: str) -> harness.Response:
    def ok() -> harness.Response | None:
        r = harness.try_get(envoy.url + path, harness.bearer())
        return r if r is not None and r.status == 200 else None

    return harness.wait_until(ok, what=f"200 on {path}")


def test_every_sample_service_answers_at_its_base_path(envoy: harness.Envoy) -> None:
    for svc in sample_data()["services"]:
        resp = served(envoy, svc["base_path"] + "/items/7")
        seen = resp.json()
        assert seen["service"] == svc["service_name"]
        assert seen["path"] == svc["base_path"] + "/items/7"


def test_the_longest_base_path_wins(envoy: harness.Envoy) -> None:
    assert served(envoy, "/orders/admin/x").json()["service"] == "admin"
    assert served(envoy, "/orders/administrator").json()["service"] == "orders"
    assert served(envoy, "/orders").json()["service"] == "orders"


def test_unknown_path_is_404(envoy: harness.Envoy) -> None:
    served(envoy, "/orders/1")
    assert harness.get(envoy.url + "/nowhere", harness.bearer()).status == 404
    assert harness.get(envoy.url + "/ordersx", harness.bearer()).status == 404
    assert harness.get(envoy.url + "/nowhere").status == 404


def test_envoy_acks_the_content_hash_version(envoy: harness.Envoy, xds: harness.XdsServer) -> None:
    version = harness.wait_until(xds.version, what="a version")
    status = harness.wait_until(
        lambda: (
            (s := xds.status())["proxies"]
            and all(t["state"] == "SYNCED" for t in s["proxies"][0]["types"].values())
            and s
        ),
        what="Envoy SYNCED on every type",
    )
    assert status["proxies"][0]["node_id"] == envoy.node_id
    assert set(status["proxies"][0]["types"]) == {"clusters", "endpoints", "listeners", "routes"}
    route_version = status["versions"][
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    ]
    assert envoy.route_version() == route_version
    dump = envoy.config_dump()
    cluster_versions = {
        c["version_info"]
        for section in dump["configs"]
        for c in section.get("dynamic_active_clusters", [])
    }
    assert cluster_versions == {
        status["versions"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
    }
    assert version == status["version"]


def test_route_timeout_and_retries_reach_the_upstream_as_envoy_headers(
    envoy: harness.Envoy,
) -> None:
    # orders: timeout 5000 ms, per-try 2000 ms: Envoy tells the upstream its per-try budget.
    headers = served(envoy, "/orders/1").json()["headers"]
    assert headers["x-envoy-expected-rq-timeout-ms"] == "2000"
    headers = served(envoy, "/orders/admin/1").json()["headers"]
    assert headers["x-envoy-expected-rq-timeout-ms"] == "10000"
