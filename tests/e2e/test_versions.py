"""API versions through a real Envoy: a version's own upstream is chosen by its path prefix or
by the version header; anything else goes to the service's own upstream."""

from __future__ import annotations

from pathlib import Path

from tests.support.gateway import gateway, public
from tests.support.upstreams import running


def test_a_version_is_chosen_by_path_or_by_header(tmp_path: Path) -> None:
    with running("v1", "v2", "v3") as (v1, v2, v3):
        svc = public(
            "orders",
            v1.url,
            versions={"v2": {"internal_url": v2.url}, "v3": {"internal_url": v3.url}},
        )
        with gateway(tmp_path, [svc]) as gw:

            def upstream(path: str, version: str | None = None) -> str:
                headers = {"x-api-version": version} if version else {}
                resp = gw.request("GET", path, headers)
                assert resp.status == 200, resp
                # The path reaches the upstream unchanged.
                assert resp.json()["path"] == path
                name: str = resp.json()["upstream"]
                return name

            assert upstream("/orders/v2/items") == "v2"
            assert upstream("/orders/v2") == "v2"
            assert upstream("/orders/items", "v2") == "v2"
            assert upstream("/orders/items", "v3") == "v3"
            assert upstream("/orders/items") == "v1"
            assert upstream("/orders/items", "v9") == "v1"  # not a declared version
            assert upstream("/orders/v2x") == "v1"  # a whole path segment only
            assert upstream("/orders/v3/items", "v2") == "v3"  # the path wins


def test_the_version_header_is_the_catalogs(tmp_path: Path) -> None:
    with running("v1", "v2") as (v1, v2):
        svc = public(
            "orders",
            v1.url,
            versions={"v2": {"internal_url": v2.url}},
            version_header="accept-version",
        )
        with gateway(tmp_path, [svc]) as gw:
            assert (
                gw.request("GET", "/orders/x", {"accept-version": "v2"}).json()["upstream"] == "v2"
            )
            assert (
                gw.request("GET", "/orders/x", {"x-api-version": "v2"}).json()["upstream"] == "v1"
            )
