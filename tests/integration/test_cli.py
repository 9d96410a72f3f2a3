"""`sidecar validate`, `render`, `schema` and `status` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.catalogs import BAD, ROOT, SAMPLE


def sidecar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_validate_accepts_the_sample() -> None:
    result = sidecar("validate", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    assert "valid, 4 service(s), version " in result.stdout


def test_validate_lists_every_error_with_its_path(tmp_path: Path) -> None:
    data = json.loads((BAD / "per_try_timeout_above_total.json").read_text())
    data["services"][1]["base_path"] = "users"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    result = sidecar("validate", str(path))
    assert result.returncode == 1
    assert "services[1].base_path: must start with '/'" in result.stderr
    # A service that fails its own checks hides none of the checks that span fields.
    assert "services[0].retry_policy.per_try_timeout_ms: per-try timeout 1500 ms" in result.stderr
    data["services"][1]["base_path"] = "/users"
    path.write_text(json.dumps(data))
    result = sidecar("validate", str(path))
    assert result.returncode == 1
    assert "services[0].retry_policy.per_try_timeout_ms: per-try timeout 1500 ms" in result.stderr


def test_validate_prints_the_sample_output_the_catalog_docs_show(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "catalog.md").read_text()
    shown = doc.split("service_catalog.json: invalid", 1)[1].split("```", 1)[0]
    data = json.loads(SAMPLE.read_text())
    data["services"][1]["retry_policy"]["max_retries"] = 11
    data["roles"]["auditor"][0] = "billing:read"
    (tmp_path / "service_catalog.json").write_text(json.dumps(data))
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "service_catalog.json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr == "service_catalog.json: invalid" + shown


def test_validate_never_prints_credentials_put_in_a_url(tmp_path: Path) -> None:
    data = json.loads(SAMPLE.read_text())
    data["services"][0]["internal_url"] = "http://admin:s3cr3t@10.0.0.1:8080/path"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    result = sidecar("validate", str(path))
    assert result.returncode == 1
    assert "services[0].internal_url: 'http://***@10.0.0.1:8080/path'" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout
    assert "admin:" not in result.stderr + result.stdout


def test_validate_names_a_number_too_large_for_envoy_without_a_traceback(tmp_path: Path) -> None:
    data = json.loads(SAMPLE.read_text())
    data["services"][1]["circuit_breaker"]["max_connections"] = 2**32
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    result = sidecar("validate", str(path))
    assert result.returncode == 1
    assert (
        "services[1].circuit_breaker.max_connections: must be at most 4294967295 (got 4294967296)"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_validate_shows_each_endpoint_and_refuses_overlaps_with_both_paths(tmp_path: Path) -> None:
    shown = sidecar("validate", str(SAMPLE))
    assert shown.returncode == 0, shown.stderr
    assert (
        "  endpoint orders.export: POST /orders/{id}/export (template): rate_limit "
        '{"requests_per_minute": 5}' in shown.stdout
    )
    data = json.loads((BAD / "endpoints_overlap.json").read_text())
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    result = sidecar("validate", str(path))
    assert result.returncode == 1
    assert (
        "services[0].endpoints[1]: overlaps services[0].endpoints[0] and is as specific"
        in result.stderr
    )


def test_render_shows_each_endpoint_route_before_its_service() -> None:
    result = sidecar("render", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    (config,) = json.loads(result.stdout)["resources"]["routes"]
    names = [r["name"] for r in config["virtual_hosts"][0]["routes"]]
    assert names.index("orders.export") < names.index("orders")
    (export,) = [r for r in config["virtual_hosts"][0]["routes"] if r["name"] == "orders.export"]
    template = export["match"]["path_match_policy"]["typed_config"]["path_template"]
    assert template == "/orders/{id}/export"


def test_render_prints_every_resource_type_as_json() -> None:
    result = sidecar("render", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert {c["name"] for c in rendered["resources"]["clusters"]} == {
        "orders",
        "orders.acme",
        "catalog",
        "catalog@v2",
        "status",
        "admin",
        "sidecar_cache_side",
    }
    assert rendered["resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 10000
    assert len(rendered["version"]) == 16


def test_schema_prints_the_shipped_schema() -> None:
    result = sidecar("schema")
    shipped = json.loads((SAMPLE.parent / "service_catalog.schema.json").read_text())
    assert json.loads(result.stdout) == shipped


# A status document as the xDS server writes it: one proxy with its clusters SYNCED.
STATUS: dict[str, Any] = {
    "version": "v1",
    "fleet_acked_version": "v1",
    "versions": {},
    "catalog": {"path": "/etc/catalog.json", "valid": True, "errors": [], "checked_at": 1.0},
    "proxies": [
        {
            "node_id": "edge-1",
            "node_cluster": "edge",
            "protocol": "sotw",
            "connected_at": 1.0,
            "types": {
                "clusters": {"state": "SYNCED", "acked_version": "c1", "current_version": "c1"}
            },
        }
    ],
    "refused": [],
    "rollback_on_nack": True,
    "rejected": [],
    "time": 2.0,
}


@contextmanager
def status_page(body: bytes) -> Iterator[str]:
    """An HTTP server on loopback answering `body` at /status; yields its host:port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def status(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return sidecar("status", "--xds-http", address, "--envoy-admin", "", *flags)


def test_status_prints_each_proxys_state_and_exits_0_when_all_is_synced() -> None:
    with status_page(json.dumps(STATUS).encode()) as address:
        result = status(address)
    assert result.returncode == 0, result.stderr
    assert "    clusters   SYNCED  acked c1" in result.stdout.splitlines()


def test_status_json_prints_the_document_as_the_server_wrote_it() -> None:
    sent = {**STATUS, "added_by_a_newer_server": [1, 2]}
    with status_page(json.dumps(sent).encode()) as address:
        result = status(address, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == sent


def test_status_from_a_server_of_another_version_names_the_field_it_cannot_read() -> None:
    sent = json.loads(json.dumps(STATUS))
    sent["proxies"][0]["types"]["clusters"]["state"] = "DRIFTING"
    for flags in ((), ("--json",)):
        with status_page(json.dumps(sent).encode()) as address:
            result = status(address, *flags)
        assert result.returncode == 1
        assert (
            "proxies[0].types.clusters.state: expected one of SYNCED, STALE, NACKED, "
            "got 'DRIFTING'" in result.stderr
        )
        assert "Traceback" not in result.stderr


def test_status_from_a_page_that_is_not_json_says_so() -> None:
    with status_page(b"<html>not the xDS server</html>") as address:
        result = status(address)
    assert result.returncode == 1
    assert f"http://{address}/status did not answer JSON" in result.stderr
    assert "Traceback" not in result.stderr


def _with(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(STATUS))
    doc.update(changes)
    return doc


NACKED = {"state": "NACKED", "acked_version": "c0", "current_version": "c1"}


@pytest.mark.parametrize(
    ("document", "code"),
    [
        (STATUS, 0),
        (_with(proxies=[]), 3),  # Envoy gone: nothing is known to serve
        (_with(version=None), 3),  # no valid catalog was ever loaded
        (
            _with(proxies=[{**STATUS["proxies"][0], "types": {"listeners": NACKED}}]),
            2,
        ),
        (_with(catalog={**STATUS["catalog"], "valid": False, "errors": ["x: bad"]}), 2),
    ],
    ids=["synced", "no-proxy", "no-version", "nacked", "invalid-on-disk"],
)
def test_status_exits_alike_in_text_and_json(document: dict[str, Any], code: int) -> None:
    with status_page(json.dumps(document).encode()) as address:
        text, as_json = status(address), status(address, "--json")
    assert (text.returncode, as_json.returncode) == (code, code), text.stdout + text.stderr


def test_status_json_escapes_what_a_peer_sent() -> None:
    hostile = _with(proxies=[{**STATUS["proxies"][0], "node_id": "\x1b]52;c;ZXZpbA==\x07\x9b"}])
    with status_page(json.dumps(hostile, ensure_ascii=False).encode()) as address:
        result = status(address, "--json")
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in result.stdout)
    assert json.loads(result.stdout)["proxies"][0]["node_id"] == "\x1b]52;c;ZXZpbA==\x07\x9b"


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # every write to stdout now fails with EPIPE, as under `| head` once it quits
    try:
        with status_page(json.dumps(STATUS).encode()) as address:
            result = subprocess.run(
                [sys.executable, "-m", "sidecar", "status", "--xds-http", address],
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
    finally:
        os.close(write)
    assert result.returncode == 1
    assert result.stderr == ""
