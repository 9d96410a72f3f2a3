"""The xDS server's gRPC health: NOT_SERVING until a valid catalog is loaded, then SERVING."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import http, ports, stack, wait
from tests.support.catalogs import sample_data, write_json


def probe(port: int, service: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "probe", f"127.0.0.1:{port}", "--service", service],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_health_follows_the_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "c" / "service_catalog.json"
    catalog.parent.mkdir()
    data = sample_data()
    data["services"][0]["timeout_ms"] = 0
    write_json(catalog, data)
    xds = stack.start_xds(catalog, tmp_path)
    with stack.stopping(xds.proc):
        result = probe(xds.port)
        assert result.returncode == 1
        assert "NOT_SERVING" in result.stdout
        assert http.get(f"http://127.0.0.1:{xds.http_port}/ready").status == 503
        assert xds.version() is None

        data["services"][0]["timeout_ms"] = 5000
        catalog.write_text(json.dumps(data))
        wait.wait_until(lambda: probe(xds.port).returncode == 0, what="SERVING")
        ads = probe(xds.port, "envoy.service.discovery.v3.AggregatedDiscoveryService")
        assert ads.returncode == 0 and "SERVING" in ads.stdout
        assert xds.version() is not None


def test_probe_of_nothing_listening_fails_clearly() -> None:
    result = probe(ports.free_port())
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
