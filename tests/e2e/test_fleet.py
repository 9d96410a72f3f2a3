"""Many Envoys on one control plane."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support import stack, wait


def test_two_envoys_converge_on_every_version(
    xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path
) -> None:
    first = stack.start_envoy(xds, tmp_path, node_id="edge-a", authz=authz)
    second = stack.start_envoy(xds, tmp_path, node_id="edge-b", authz=authz)
    with stack.stopping(first.proc, second.proc):

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

        wait.wait_until(lambda: synced_on(xds.version() or ""), what="both SYNCED")
        old = xds.version()

        data = json.loads(xds.catalog.read_text())
        data["services"][1]["timeout_ms"] = 3000
        tmp = xds.catalog.with_name("next.json")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, xds.catalog)

        wait.wait_until(lambda: xds.version() != old, what="a new version")
        wait.wait_until(lambda: synced_on(xds.version() or ""), what="both SYNCED again")
