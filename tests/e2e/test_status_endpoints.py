"""`sidecar status` shows, per service and endpoint, the health a real Envoy sees, beside the
xDS sync state; it exits 2 while a service has no healthy endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import wait
from tests.support.gateway import Gateway, gateway, public
from tests.support.upstreams import HEALTH_PATH, running

CHECK = {"interval_ms": 100, "timeout_ms": 100, "unhealthy_threshold": 1, "healthy_threshold": 1}


def status(gw: Gateway, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "status",
            "--xds-http",
            f"127.0.0.1:{gw.xds.http_port}",
            "--envoy-admin",
            f"127.0.0.1:{gw.envoy.admin_port}",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_status_shows_each_endpoints_health_next_to_the_sync_state(tmp_path: Path) -> None:
    with running("a", "b", "c") as (a, b, c):
        services = [
            public("svc", [a.url, b.url], healthcheck_endpoint=HEALTH_PATH, health_check=CHECK),
            public("down", c.url, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK),
        ]
        with gateway(tmp_path, services) as gw:
            b.set_healthy(False)
            c.set_healthy(False)
            wait.wait_until(lambda: gw.unhealthy("down") == {c.port}, what="c unhealthy")
            wait.wait_until(lambda: gw.unhealthy("svc") == {b.port}, what="b unhealthy")

            result = status(gw)
            assert result.returncode == 2, result.stdout + result.stderr
            out = result.stdout
            assert "SYNCED" in out
            row = {
                port: next(line for line in out.splitlines() if f":{port} " in line)
                for port in (a.port, b.port, c.port)
            }
            assert "HEALTHY" in row[a.port] and "UNHEALTHY" not in row[a.port]
            assert "UNHEALTHY" in row[b.port] and "fails its health check" in row[b.port]
            assert "NO HEALTHY ENDPOINT: down answers 503" in out

            document = json.loads(status(gw, "--json").stdout)
            health = {e["address"]: e["health"] for e in document["endpoints"]}
            assert health[f"127.0.0.1:{b.port}"] == "UNHEALTHY"

            c.set_healthy(True)
            wait.wait_until(lambda: not gw.unhealthy("down"), what="c healthy again")
            assert status(gw).returncode == 0


def test_status_without_envoys_admin_still_shows_the_sync_state(tmp_path: Path) -> None:
    with running("a") as (a,), gateway(tmp_path, [public("svc", a.url)]) as gw:
        gw.envoy.proc.stop()
        result = status(gw)
        assert "endpoint health unknown" in result.stderr
        assert "Traceback" not in result.stderr
