"""TLS on the servers' ports, with real processes: the certificate files are re-read for new
connections when they change (rotation), a non-loopback bind without client authentication is
warned about at start, Envoy accepts the bootstraps that present a client certificate, and
`sidecar probe` tells alive from ready."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.bootstrap import BootstrapOptions, ClientTls, render_json
from sidecar_shared.contract import AUTHZ_TRANSPORTS, CHECK_PATH_PREFIX
from tests.support import stack, wait
from tests.support.envoy import envoy_validate
from tests.support.mtls import Ca, Issued

SAMPLE = Path(__file__).resolve().parents[2] / "service_catalog.json"


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
@pytest.mark.parametrize("delta", [False, True])
def test_envoy_accepts_a_bootstrap_with_its_client_certificate(
    tmp_path: Path, transport: str, delta: bool
) -> None:
    ca = Ca(tmp_path)
    client = ca.client("n")
    options = BootstrapOptions(
        node_id="n",
        xds_host="xds-server",
        authz_transport=transport,
        delta=delta,
        tls=ClientTls(str(client.cert_file), str(client.key_file), str(ca.ca_file)),
    )
    path = tmp_path / "b.json"
    path.write_text(render_json(options))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def _grpc_health(port: int, ca: Ca, client: Issued) -> bool:
    """Whether a client with this certificate gets a health answer (a new connection)."""
    creds = grpc.ssl_channel_credentials(
        ca.ca_file.read_bytes(), client.key_file.read_bytes(), client.cert_file.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return True


def _http_check(port: int, ca: Ca, client: Issued) -> bytes | None:
    """The server's certificate (DER) when a client with this certificate gets a check
    answered, None when it is refused."""
    context = ssl.create_default_context(cafile=ca.ca_file)
    context.load_cert_chain(client.cert_file, client.key_file)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", CHECK_PATH_PREFIX + "/orders/1")
        conn.getresponse().read()
        assert conn.sock is not None
        return conn.sock.getpeercert(binary_form=True)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_ext_authz_rereads_its_certificate_and_client_ca_when_the_files_change(
    tmp_path: Path,
) -> None:
    first, second = Ca(tmp_path / "1", "first CA"), Ca(tmp_path / "2", "second CA")
    server = first.server_tls(name="authz")
    client_ca = tmp_path / "client-ca.pem"
    shutil.copy(first.ca_file, client_ca)
    authz = stack.start_authz(
        tmp_path,
        args=[
            *("--authz-tls-cert", str(server.cert), "--authz-tls-key", str(server.key)),
            *("--authz-tls-client-ca", str(client_ca)),
        ],
    )
    old_client, new_client = first.client("envoy"), second.client("envoy")
    try:
        assert _grpc_health(authz.port, first, old_client)
        assert not _grpc_health(authz.port, first, new_client)
        old_cert = _http_check(authz.check_port, first, old_client)
        assert old_cert is not None
        assert _http_check(authz.check_port, first, new_client) is None
        # Rotation: the second CA signs the clients from now on, and a new server certificate.
        client_ca.write_bytes(first.ca_file.read_bytes() + second.ca_file.read_bytes())
        renewed = first.server("authz-renewed")
        tmp = server.cert.with_suffix(".tmp")
        shutil.copy(renewed.cert_file, tmp)
        shutil.copy(renewed.key_file, server.key)
        os.replace(tmp, server.cert)
        wait.wait_until(
            lambda: _grpc_health(authz.port, first, new_client),
            timeout=10,
            what="the gRPC port to trust the new client CA",
        )
        wait.wait_until(
            lambda: (
                (cert := _http_check(authz.check_port, first, new_client)) is not None
                and cert != old_cert
            ),
            timeout=10,
            what="the HTTP check port to trust the new client CA with its new certificate",
        )
    finally:
        authz.proc.stop()


def test_a_port_bound_beyond_loopback_without_client_authentication_is_warned_about(
    tmp_path: Path,
) -> None:
    xds = stack.start_xds(SAMPLE, tmp_path, args=["--xds-host", "0.0.0.0"])
    try:
        wait.wait_until(lambda: "started" in xds.proc.output(), timeout=10, what="the start-up log")
        records = [
            json.loads(line) for line in xds.proc.output().splitlines() if line.startswith("{")
        ]
        warnings = [r["message"] for r in records if r.get("level") == "warning"]
        assert any(f"the xDS port listens on 0.0.0.0:{xds.port}" in w for w in warnings), records
    finally:
        xds.proc.stop()


def _probe(*args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "probe", *args],
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


def test_sidecar_probe_tells_a_live_server_without_a_valid_catalog_from_a_ready_one(
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{not json")
    xds = stack.start_xds(catalog, tmp_path)
    ready = f"http://127.0.0.1:{xds.http_port}/ready"
    try:
        assert _probe(ready) == 1  # not ready: no valid catalog
        assert _probe("--alive", ready) == 0  # but alive: not to be restarted
        assert _probe(f"127.0.0.1:{xds.port}") == 1
        assert _probe("--alive", f"127.0.0.1:{xds.port}") == 0
        shutil.copy(SAMPLE, catalog)
        wait.wait_until(lambda: _probe(ready) == 0, timeout=20, what="the catalog to load")
    finally:
        xds.proc.stop()
    assert _probe("--alive", ready) == 1  # nothing answers
