"""Envoy (`--mode validate`) accepts the TLS we generate: the listener's HTTPS with a client CA,
and a cluster's TLS to its upstreams with a client certificate and a CA, each read through the
SDS files the xDS server writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.envoy import envoy_validate, static_bootstrap
from tests.support.mtls import Ca
from tests.support.translation import build_snapshot
from xds_server.catalog import Catalog, parse_catalog
from xds_server.resources.common import Options
from xds_server.resources.tls import ListenerTls, secrets
from xds_server.sds_files import SdsWriter


def bootstrap(catalog: Catalog, options: Options) -> dict[str, Any]:
    # SDS needs the node's id and cluster (every bootstrap of ours sets them).
    return {
        **static_bootstrap(build_snapshot(catalog, options)),
        "node": {"id": "n", "cluster": "c"},
    }


def test_envoy_accepts_the_listener_and_upstream_tls(tmp_path: Path) -> None:
    ca = Ca(tmp_path / "pki")
    server, client = ca.server(), ca.client("envoy")
    catalog = parse_catalog(
        {
            "services": [
                {
                    "service_name": "secure",
                    "base_path": "/secure",
                    "internal_url": ["https://127.0.0.1:8443", "https://backend.internal:8443"],
                    "protocol": "http2",
                    "tls": {
                        "ca_file": str(ca.ca_file),
                        "cert_file": str(client.cert_file),
                        "key_file": str(client.key_file),
                        "sni": "backend.internal",
                    },
                }
            ]
        }
    )
    sds_dir = str(tmp_path / "sds")
    options = Options(
        listener_tls=ListenerTls(str(server.cert_file), str(server.key_file), str(ca.ca_file)),
        sds_dir=sds_dir,
        listener_port=8443,
        http_redirect_port=8080,
    )
    SdsWriter(sds_dir)(secrets(catalog, options.listener_tls))
    assert len(list(Path(sds_dir).glob("*.json"))) == 4
    path = tmp_path / "static.json"
    path.write_text(json.dumps(bootstrap(catalog, options)))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(json.loads(path.read_text())["static_resources"]["listeners"]) == 2


def test_envoy_would_reject_the_config_without_its_sds_files(tmp_path: Path) -> None:
    # The check above can fail: the SDS files must exist when Envoy reads the listener (so
    # the xDS server writes them before it serves a snapshot that names them).
    ca = Ca(tmp_path / "pki")
    server = ca.server()
    catalog = parse_catalog(
        {"services": [{"service_name": "a", "base_path": "/a", "internal_url": "http://h:1"}]}
    )
    options = Options(
        listener_tls=ListenerTls(str(server.cert_file), str(server.key_file)),
        sds_dir=str(tmp_path / "sds"),
    )
    path = tmp_path / "static.json"
    path.write_text(json.dumps(bootstrap(catalog, options)))
    result = envoy_validate(path)
    assert result.returncode != 0
    assert "does not exist" in result.stdout + result.stderr
