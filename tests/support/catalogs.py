"""The sample catalog and the bad-catalog fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "service_catalog.json"
BAD = ROOT / "tests" / "fixtures" / "bad_catalogs"


class Upstream(Protocol):
    @property
    def port(self) -> int: ...


def sample_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SAMPLE.read_text())
    data.pop("$schema", None)
    return data


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def write_catalog(
    workdir: Path, services: list[dict[str, Any]], roles: dict[str, list[str]] | None = None
) -> Path:
    """A catalog of `services` (and `roles`) in a directory of its own under `workdir`."""
    path = workdir / "catalog" / "service_catalog.json"
    path.parent.mkdir()
    write_json(path, {"services": services, "roles": roles or {}})
    return path


def write_sample_catalog(workdir: Path, echo: Callable[[str], Upstream]) -> Path:
    """The sample catalog in `workdir/catalog`, every service pointing at its own upstream(s)
    made by `echo(name)` (tenant upstreams and versions too)."""
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
        for version, spec in svc.get("versions", {}).items():
            port = echo(f"{svc['service_name']}@{version}").port
            spec["internal_url"] = f"http://127.0.0.1:{port}"
    catalog_dir = workdir / "catalog"
    catalog_dir.mkdir()
    path = catalog_dir / "service_catalog.json"
    write_json(path, data)
    return path
