"""A real Envoy routes exactly as the catalog says."""

from __future__ import annotations

import pytest

from tests.support import http, stack, tokens, wait
from tests.support.catalogs import sample_data
from xds_server import typeurls

CDS = typeurls.CLUSTER


def served(envoy: stack.Envoy, path: str) -> http.Response:
    def ok() -> http.Response | None:
        r = http.try_get(envoy.url + path, tokens.bearer())
        return r if r is not None and r.status == 200 else None

    return wait.wait_until(ok, what=f"200 on {path}")


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_every_sample_service_answers_at_its_base_path(envoy: stack.Envoy) -> None:
    for svc in sample_data()["services"]:
        resp = served(envoy, svc["base_path"] + "/items/7")
        seen = resp.json()
        assert seen["service"] == svc["service_name"]
        assert seen["path"] == svc["base_path"] + "/items/7"


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_the_longest_base_path_wins(envoy: stack.Envoy) -> None:
    assert served(envoy, "/orders/admin/x").json()["service"] == "admin"
    assert served(envoy, "/orders/administrator").json()["service"] == "orders"
    assert served(envoy, "/orders").json()["service"] == "orders"


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_unknown_path_is_404(envoy: stack.Envoy) -> None:
    served(envoy, "/orders/1")
    assert http.get(envoy.url + "/nowhere", tokens.bearer()).status == 404
    assert http.get(envoy.url + "/ordersx", tokens.bearer()).status == 404
    assert http.get(envoy.url + "/nowhere").status == 404


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_envoy_acks_the_content_hash_version(envoy: stack.Envoy, xds: stack.XdsServer) -> None:
    version = wait.wait_until(xds.version, what="a version")
    status = wait.wait_until(
        lambda: (
            (s := xds.status())["proxies"]
            and all(t["state"] == "SYNCED" for t in s["proxies"][0]["types"].values())
            and s
        ),
        what="Envoy SYNCED on every type",
    )
    assert status["proxies"][0]["node_id"] == envoy.node_id
    assert set(status["proxies"][0]["types"]) == {"clusters", "endpoints", "listeners", "routes"}
    # The versions are content hashes: a build of the same catalog here gives them too.
    expected = xds.snapshot()
    assert status["versions"] == dict(expected.versions)
    assert version == status["version"] == expected.version
    assert envoy.clusters_version() == expected.versions[CDS]
    assert envoy.route_version() == xds.route_version_for(envoy)
    dump = envoy.config_dump()
    cluster_versions = {
        c["cluster"]["name"]: c["version_info"]
        for section in dump["configs"]
        for c in section.get("dynamic_active_clusters", [])
    }
    # Under Delta each cluster carries its own version; under SotW, the type's.
    assert cluster_versions == {
        name: r.version if envoy.delta else expected.versions[CDS]
        for name, r in expected.resources[CDS].items()
    }


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_route_timeout_and_retries_reach_the_upstream_as_envoy_headers(
    envoy: stack.Envoy,
) -> None:
    # orders: timeout 5000 ms, per-try 2000 ms: Envoy tells the upstream its per-try budget.
    headers = served(envoy, "/orders/1").json()["headers"]
    assert headers["x-envoy-expected-rq-timeout-ms"] == "2000"
    headers = served(envoy, "/orders/admin/1").json()["headers"]
    assert headers["x-envoy-expected-rq-timeout-ms"] == "10000"


def test_envoy_finds_nothing_deprecated_in_our_config(
    envoy: stack.Envoy, xds: stack.XdsServer
) -> None:
    wait.wait_until(lambda: xds.synced(envoy.node_id), what="every resource ACKed")
    # A deprecated field works today and is removed in a later Envoy: none may creep in.
    assert "Deprecated field" not in envoy.proc.output()
