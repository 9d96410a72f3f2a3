"""Save the catalog → first 200 on the new route, through a real Envoy.

    python -m bench.reload_latency [--edits 20]

Each edit adds a service with a new base path (write-temp-and-rename, as editors do) and polls
Envoy on one kept-alive connection until the new path answers 200. A second clock stops when
the xDS server reports the new version, so the split between our reload and Envoy's apply shows.
Prints median and p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import http.client as httplib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from sidecar.echo import EchoServer
from tests.support import http, stack, wait


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per edit at most")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    (workdir / "catalog").mkdir()
    catalog = workdir / "catalog" / "service_catalog.json"
    upstream = EchoServer("bench").start()
    services = [
        {
            "service_name": "base",
            "base_path": "/base",
            "internal_url": f"http://127.0.0.1:{upstream.port}",
            "public": True,
        }
    ]
    catalog.write_text(json.dumps({"services": services}))
    xds = stack.start_xds(catalog, workdir)
    envoy = stack.start_envoy(xds, workdir)
    to_200: list[float] = []
    to_version: list[float] = []
    try:
        conn = httplib.HTTPConnection("127.0.0.1", envoy.listener_port, timeout=2)
        wait.wait_until(lambda: http.try_get(envoy.url + "/base/x"), what="first route")
        for i in range(args.edits):
            name = f"new-{i}"
            services.append(
                {
                    "service_name": name,
                    "base_path": f"/{name}",
                    "internal_url": f"http://127.0.0.1:{upstream.port}",
                    "public": True,
                }
            )
            old_version = xds.version()
            tmp = catalog.with_name("next.tmp")
            tmp.write_text(json.dumps({"services": services}))
            started = time.perf_counter()
            os.replace(tmp, catalog)
            version_seen: float | None = None
            deadline = started + args.timeout
            while True:
                conn.request("GET", f"/{name}/x")
                resp = conn.getresponse()
                resp.read()
                now = time.perf_counter()
                if resp.status == 200:
                    to_200.append((now - started) * 1000)
                    break
                if version_seen is None and xds.version() != old_version:
                    version_seen = (time.perf_counter() - started) * 1000
                if now > deadline:
                    raise SystemExit(f"edit {i}: no 200 within {args.timeout}s")
            if version_seen is None:
                version_seen = to_200[-1]
            to_version.append(version_seen)
        conn.close()
    finally:
        envoy.proc.stop()
        xds.proc.stop()
        upstream.stop()
    print(f"edits: {len(to_200)} (write-temp-and-rename; debounce 20 ms)")
    print(
        f"save → xDS version: median {statistics.median(to_version):6.1f} ms   "
        f"p95 {p95(to_version):6.1f} ms"
    )
    print(
        f"save → first 200:   median {statistics.median(to_200):6.1f} ms   "
        f"p95 {p95(to_200):6.1f} ms   max {max(to_200):6.1f} ms"
    )


if __name__ == "__main__":
    main()
