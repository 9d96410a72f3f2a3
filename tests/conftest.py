from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from tests import harness

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "service_catalog.json"


def sample_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SAMPLE.read_text())
    data.pop("$schema", None)
    return data


@pytest.fixture
def echo() -> Iterator[Callable[[str], EchoServer]]:
    """Start echo upstreams on ports from the OS; all are stopped after the test."""
    servers: list[EchoServer] = []

    def make(name: str) -> EchoServer:
        server = EchoServer(name, port=harness.free_port()).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def sample_catalog(tmp_path: Path, echo: Callable[[str], EchoServer]) -> Path:
    """The sample catalog, every service pointing at its own echo upstream(s)."""
    data = sample_data()
    for svc in data["services"]:
        urls = (
            svc["internal_url"] if isinstance(svc["internal_url"], list) else [svc["internal_url"]]
        )
        ports = [echo(svc["service_name"]).port for _ in urls]
        svc["internal_url"] = [f"http://127.0.0.1:{p}" for p in ports]
        for tenant in svc.get("tenant_upstreams", {}):
            port = echo(f"{svc['service_name']}-{tenant}").port
            svc["tenant_upstreams"][tenant] = f"http://127.0.0.1:{port}"
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    path = catalog_dir / "service_catalog.json"
    write_json(path, data)
    return path


@pytest.fixture
def xds(sample_catalog: Path, tmp_path: Path) -> Iterator[harness.XdsServer]:
    server = harness.start_xds(sample_catalog, tmp_path)
    yield server
    server.proc.stop()


@pytest.fixture
def authz(tmp_path: Path) -> Iterator[harness.Authz]:
    server = harness.start_authz(tmp_path)
    yield server
    server.proc.stop()


@pytest.fixture
def envoy(xds: harness.XdsServer, authz: harness.Authz, tmp_path: Path) -> Iterator[harness.Envoy]:
    proxy = harness.start_envoy(xds, tmp_path, authz_port=authz.port)
    yield proxy
    proxy.proc.stop()
