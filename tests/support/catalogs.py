"""The sample catalog and the bad-catalog fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "service_catalog.json"
BAD = ROOT / "tests" / "fixtures" / "bad_catalogs"


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
