"""`sidecar validate --env/--all-envs`, `render --env` and `diff` as CI and a user run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.catalogs import SAMPLE

STAGING: dict[str, Any] = {
    "services": {
        "orders": {
            "internal_url": "http://${ORDERS_HOST:-127.0.0.1}:29101",
            "rate_limit": {"requests_per_minute": 600},
        },
        "admin": None,
    },
    "roles": {"customer": ["orders:read", "catalog:read"], "auditor": None},
}
PRODUCTION: dict[str, Any] = {"services": [{"service_name": "catalog", "timeout_ms": 900}]}


def sidecar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **(env or {})},
    )


def _catalogs(tmp_path: Path, **overlays: Any) -> Path:
    base = tmp_path / "service_catalog.json"
    # Without the sample's access tests: these overlays remove what some of them name.
    sample = json.loads(SAMPLE.read_text())
    sample.pop("tests", None)
    base.write_text(json.dumps(sample))
    for env, data in overlays.items():
        (tmp_path / f"service_catalog.{env}.json").write_text(json.dumps(data))
    return base


def test_all_envs_passes_in_ci_when_every_overlay_merges_into_a_valid_catalog(
    tmp_path: Path,
) -> None:
    base = _catalogs(tmp_path, staging=STAGING, production=PRODUCTION)
    result = sidecar("validate", str(base), "--all-envs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{base}: valid (base), 4 service(s)")
    assert any(
        "service_catalog.production.json: valid (env production), 4 service(s)" in x for x in lines
    )
    assert any(
        "service_catalog.staging.json: valid (env staging), 3 service(s)" in x for x in lines
    )


def test_all_envs_fails_naming_the_environment_file_and_path_of_each_error(tmp_path: Path) -> None:
    broken = {"services": {"catalog": {"timeout_ms": -3}}}
    unset = {"services": {"orders": {"internal_url": "http://${ORDERS_PROD_HOST}:80"}}}
    base = _catalogs(tmp_path, staging=STAGING, broken=broken, unset=unset)
    result = sidecar("validate", str(base), "--all-envs")
    assert result.returncode == 1
    assert f"{tmp_path}/service_catalog.broken.json: services.catalog.timeout_ms: must be" in (
        result.stderr
    )
    assert (
        f"{tmp_path}/service_catalog.unset.json: services.orders.internal_url: "
        "${ORDERS_PROD_HOST} is not set" in result.stderr
    )
    assert result.stderr.splitlines()[-1] == "sidecar validate: invalid: broken, unset"
    assert "valid (env staging)" in result.stdout  # the good one is still checked and shown
    # With the variable set, that environment is valid.
    result = sidecar("validate", str(base), "--env", "unset", env={"ORDERS_PROD_HOST": "10.9.8.7"})
    assert result.returncode == 0, result.stderr


def test_an_error_from_the_base_names_the_base_even_with_an_overlay(tmp_path: Path) -> None:
    base = _catalogs(tmp_path, staging={"services": {"admin": None}})
    result = sidecar("validate", str(base), env={"SIDECAR_ENV": "staging"})
    assert result.returncode == 1
    # The base's auditor role names the service the overlay removed.
    assert f"{base}: roles.auditor[0]: permission 'admin:read' names unknown service" in (
        result.stderr
    )


def test_render_env_serves_the_merged_catalog(tmp_path: Path) -> None:
    base = _catalogs(tmp_path, staging=STAGING)
    result = sidecar("render", str(base), "--env", "staging", env={"ORDERS_HOST": "127.0.0.9"})
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)["resources"]
    assert "admin" not in {c["name"] for c in rendered["clusters"]}
    (orders,) = [e for e in rendered["endpoints"] if e["cluster_name"] == "orders"]
    address = orders["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.9", 29101)


def test_diff_shows_what_differs_service_by_service(tmp_path: Path) -> None:
    base = _catalogs(tmp_path, staging=STAGING, production=PRODUCTION)
    result = sidecar("diff", str(base), "--env", "production", "--env", "staging")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'service admin:\n  (service):\n    (resource): "present" → (absent)' in out
    assert "socket_address.port_value: 19101 → 29101" in out
    assert ".rate_limit: [120, 60, 20] → [600, 60, 20]" in out
    assert 'route.timeout: "0.900s" → "' in out  # production's catalog timeout
    as_json = json.loads(
        sidecar("diff", str(base), "--env", "production", "--env", "staging", "--json").stdout
    )
    assert as_json["services"]["admin"] == [
        {"resource": "(service)", "path": "", "a": "present", "b": None}
    ]
    same = sidecar("diff", str(base), "--env", "", "--env", "")
    assert same.returncode == 0 and "no difference" in same.stdout
