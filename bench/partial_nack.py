"""Issue 20's reproductions, measured through real Envoys: requests answered after an Envoy
rejects part of a version, and after the xDS server restarts with the rejected catalog on disk.

    python -m bench.partial_nack [--requests 50] [--veto]

One Envoy from `sidecar bootstrap` and one from the same bootstrap without
`bootstrap_extensions` (it rejects the side listener of a cacheable service and accepts the
main listener with the cache filter). The sample catalog with nothing cacheable; then its
`catalog` service made cacheable; `--requests` GETs of that service through each Envoy, by
status; with `--veto` (proxies may veto, `--xds-unauthenticated-veto`) the xDS server is then
restarted (same ports, same state directory) and the requests are sent again.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from sidecar.echo import EchoServer
from tests.support import http, ports, stack, tokens, wait
from tests.support.catalogs import sample_data


def no_extensions(bootstrap: dict[str, Any]) -> None:
    bootstrap.pop("bootstrap_extensions", None)


def set_cacheable(catalog: Path, data: dict[str, Any], on: bool) -> None:
    for svc in data["services"]:
        if svc["service_name"] == "catalog":
            svc["cacheable"] = on
    tmp = catalog.with_name("next.json")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, catalog)


def statuses(envoys: list[stack.Envoy], n: int) -> dict[str, dict[int, int]]:
    out = {}
    for e in envoys:
        seen: Counter[int] = Counter()
        for i in range(n):
            resp = http.try_get(f"{e.url}/catalog/item-{i}", tokens.bearer())
            seen[resp.status if resp is not None else 0] += 1
        out[e.node_id] = dict(seen)
    return out


def synced(xds: stack.XdsServer) -> bool:
    proxies = xds.status()["proxies"]
    return len(proxies) == 2 and all(
        len(p["types"]) == 4 and all(t["state"] == "SYNCED" for t in p["types"].values())
        for p in proxies
    )


def nacked(xds: stack.XdsServer) -> bool:
    return any("nacked_version" in t for p in xds.status()["proxies"] for t in p["types"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--veto", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="partial-nack-"))
    echoes: list[EchoServer] = []
    data = sample_data()
    for svc in data["services"]:
        urls = svc["internal_url"]
        count = len(urls) if isinstance(urls, list) else 1
        svc["internal_url"] = []
        for _ in range(count):
            echoes.append(EchoServer(svc["service_name"], port=ports.free_port()).start())
            svc["internal_url"].append(f"http://127.0.0.1:{echoes[-1].port}")
        for tenant in svc.get("tenant_upstreams", {}):
            echoes.append(EchoServer(tenant, port=ports.free_port()).start())
            svc["tenant_upstreams"][tenant] = f"http://127.0.0.1:{echoes[-1].port}"
    (work / "catalog").mkdir()
    catalog = work / "catalog" / "service_catalog.json"
    set_cacheable(catalog, data, False)
    veto = stack.VETO_UNAUTHENTICATED if args.veto else []
    authz = stack.start_authz(work)
    xds = stack.start_xds(catalog, work, args=veto)
    envoys = [
        stack.start_envoy(xds, work, node_id="edge-full", authz=authz),
        stack.start_envoy(xds, work, node_id="edge-bare", authz=authz, edit=no_extensions),
    ]
    try:
        wait.wait_until(lambda: synced(xds), timeout=60, what="both Envoys SYNCED")
        print("before the edit:", statuses(envoys, args.requests))
        set_cacheable(catalog, data, True)
        wait.wait_until(lambda: nacked(xds), timeout=60, what="the NACK")
        # Whatever follows the NACK (a put-back, a rollback) lands within this.
        wait.wait_until(lambda: statuses(envoys, 1)["edge-full"].get(200), timeout=30)
        print("after `cacheable: true`:", statuses(envoys, args.requests))
        if args.veto:
            xds.proc.stop()
            xds = stack.start_xds(
                catalog, work, ports=(xds.port, xds.http_port, xds.listener_port), args=veto
            )
            wait.wait_until(lambda: len(xds.status()["proxies"]) == 2, timeout=60)
            wait.wait_until(lambda: xds.status()["version"], timeout=60)
            print("after a restart:", statuses(envoys, args.requests))
            status = xds.status()
            print(
                "status: serving",
                status["version"],
                "catalog valid" if status["catalog"]["valid"] else "catalog refused",
                "rejected",
                [r["version"] for r in status["rejected"]],
            )
    finally:
        xds.proc.stop()
        for e in envoys:
            e.proc.stop()
        authz.proc.stop()
        for echo in echoes:
            echo.stop()


if __name__ == "__main__":
    main()
