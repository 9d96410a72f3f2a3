"""Many Envoys on one control plane."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import harness

pytestmark = pytest.mark.e2e


def test_two_envoys_converge_on_every_version(
    xds: harness.XdsServer, authz: harness.Authz, tmp_path: Path
) -> None:
    first = harness.start_envoy(xds, tmp_path, node_id="edge-a", authz_port=authz.port)
    second = harness.start_envoy(xds, tmp_path, node_id="edge-b", authz_port=authz.port)
    with harness.stopping(first.proc, second.proc):

        def synced_on(version: str) -> bool:
            status = xds.status()
            nodes = {p["node_id"] for p in status["proxies"]}
            route_version = status["versions"][
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            ]
            return (
                status["version"] == version
                and nodes == {"edge-a", "edge-b"}
                and all(
                    t["state"] == "SYNCED" for p in status["proxies"] for t in p["types"].values()
                )
                and first.route_version() == route_version == second.route_version()
            )

        harness.wait_until(lambda: synced_on(xds.version() or ""), what="both SYNCED")
        old = xds.version()

        data = json.loads(xds.catalog.read_text())
        data["services"][1]["timeout_ms"] = 3000
        tmp = xds.catalog.with_name("next.json")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, xds.catalog)

        harness.wait_until(lambda: xds.version() != old, what="a new version")
        harness.wait_until(lambda: synced_on(xds.version() or ""), what="both SYNCED again")
