"""Envoy itself (`envoy --mode validate`) accepts our bootstraps and translated resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar import deployfiles
from sidecar.bootstrap import BootstrapOptions, render, render_json
from sidecar_shared.contract import AUTHZ_CLUSTER, AUTHZ_TRANSPORTS
from tests.support.catalog_edges import extreme_catalog
from tests.support.catalogs import ROOT, SAMPLE
from tests.support.envoy import envoy_validate, static_bootstrap
from tests.support.translation import build_snapshot
from xds_server.catalog import load_catalog, parse_catalog
from xds_server.resources.common import ObservabilityOptions, TracingOptions
from xds_server.translate import AuthzOptions, Options


@pytest.mark.parametrize("name", ["sidecar.json", "compose.json"])
def test_the_shipped_bootstraps_are_valid_and_current(name: str) -> None:
    shipped = ROOT / "envoy" / name
    result = envoy_validate(shipped)
    assert result.returncode == 0, result.stdout + result.stderr
    options = {"sidecar.json": deployfiles.SIDECAR, "compose.json": deployfiles.COMPOSE}[name]
    assert shipped.read_text() == render_json(options), "run: python -m sidecar.deployfiles"


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
@pytest.mark.parametrize("delta", [False, True])
def test_a_rendered_bootstrap_is_valid(tmp_path: Path, delta: bool, transport: str) -> None:
    path = tmp_path / "b.json"
    options = BootstrapOptions(node_id="n", xds_port=1234, delta=delta, authz_transport=transport)
    path.write_text(render_json(options))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    (cluster,) = [
        c for c in render(options)["static_resources"]["clusters"] if c["name"] == AUTHZ_CLUSTER
    ]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    h2 = "typed_extension_protocol_options" in cluster
    if transport == "http":  # HTTP/1.1 to the HTTP check port
        assert (h2, address["socket_address"]["port_value"]) == (
            False,
            options.authz_http_check_port,
        )
    else:  # gRPC: HTTP/2 to the gRPC port
        assert (h2, address["socket_address"]["port_value"]) == (True, options.authz_port)


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_envoy_accepts_the_sample_catalog_translation(tmp_path: Path, transport: str) -> None:
    options = Options(authz=AuthzOptions(transport=transport))
    catalog = load_catalog(SAMPLE)
    # A body limit (`orders`): Envoy judges the buffer filter inside its content-length matcher
    # (skipped for a declared length) and the routes that turn it on.
    assert any(s.max_request_body_bytes is not None for s in catalog.services)
    snapshot = build_snapshot(catalog, options)
    path = tmp_path / "static.json"
    path.write_text(json.dumps(static_bootstrap(snapshot, transport=transport)))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_would_reject_a_broken_resource(tmp_path: Path) -> None:
    # The check above can fail: a negative timeout is refused by Envoy.
    snapshot = build_snapshot(load_catalog(SAMPLE), Options())
    config = static_bootstrap(snapshot)
    config["static_resources"]["clusters"][0]["connect_timeout"] = "-1s"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(config))
    assert envoy_validate(path).returncode != 0


def test_envoy_reconnects_to_the_control_plane_quickly() -> None:
    # Envoy's default back-off for the ADS stream grows to 30 s; a restarted server would wait.
    ads = render(BootstrapOptions())["dynamic_resources"]["ads_config"]
    (service,) = ads["grpc_services"]
    back_off = service["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert back_off == {"base_interval": "0.050s", "max_interval": "1.000s"}


@pytest.mark.parametrize("pick", [0, 1], ids=["lowest", "highest"])
def test_envoy_accepts_every_number_at_its_extremes(pick: int, tmp_path: Path) -> None:
    snapshot = build_snapshot(parse_catalog(extreme_catalog(pick)), Options())
    path = tmp_path / "static.json"
    path.write_text(json.dumps(static_bootstrap(snapshot)))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_the_traced_translation_with_a_file_access_log(tmp_path: Path) -> None:
    options = Options(
        observability=ObservabilityOptions(
            access_log=str(tmp_path / "access.log"),
            tracing=TracingOptions("collector.internal", 4317, 100.0),
        )
    )
    snapshot = build_snapshot(load_catalog(SAMPLE), options)
    path = tmp_path / "static.json"
    path.write_text(json.dumps(static_bootstrap(snapshot)))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_endpoints_of_every_kind_at_their_edges(tmp_path: Path) -> None:
    """Templates with the most variables and every literal character a path may hold, methods
    alone and together, and the look-alike guards of a strict service."""
    literal = "a-._~!$&'()+,;:@%41"
    endpoints = [
        {
            "name": "five",
            "path": "/" + "/".join(f"{{v{i}_x}}" for i in range(5)) + f"/{literal}",
            "match": "template",
            "methods": ["POST", "PUT", "PATCH", "DELETE", "GET", "HEAD", "OPTIONS"],
            "rate_limit": {"requests_per_second": 1},
        },
        {"name": "exact", "path": f"/x/{literal}", "match": "exact", "methods": ["GET"]},
        {"name": "root-posts", "path": "/", "methods": ["POST"], "roles": ["admin"]},
        {"name": "deep", "path": f"/{literal}/y", "action": "read", "timeout_ms": 1},
    ]
    catalog = {
        "services": [
            {
                "service_name": "root",
                "base_path": "/",
                "internal_url": "http://127.0.0.1:1",
                "endpoints": endpoints,
                "tenant_upstreams": {"acme": "http://127.0.0.1:2"},
            },
            {"service_name": "x", "base_path": "/x/y", "internal_url": "http://127.0.0.1:3"},
            {
                "service_name": "cached",
                "base_path": "/c",
                "internal_url": "http://127.0.0.1:4",
                "endpoints": [
                    {"name": "fresh", "path": "/c/{id}", "match": "template", "cacheable": True}
                ],
            },
        ],
        "roles": {"admin": ["*"]},
    }
    for transport in AUTHZ_TRANSPORTS:
        options = Options(authz=AuthzOptions(transport=transport))
        snapshot = build_snapshot(parse_catalog(catalog), options)
        path = tmp_path / f"{transport}.json"
        path.write_text(json.dumps(static_bootstrap(snapshot, transport=transport)))
        result = envoy_validate(path)
        assert result.returncode == 0, result.stdout + result.stderr
