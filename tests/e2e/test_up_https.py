"""`sidecar up` with `SIDECAR_TLS_CERT` and `SIDECAR_TLS_KEY`: it passes them to the xDS server,
prints an https:// URL, and Envoy serves HTTPS; a key that does not match stops it at once,
naming the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import tokens
from tests.support.catalogs import write_catalog
from tests.support.https import https_get
from tests.support.mtls import Ca
from tests.support.ports import free_port
from tests.support.upstreams import Upstream
from tests.support.wait import wait_until


def up_env(tmp_path: Path, cert: Path, key: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        SIDECAR_LISTENER_PORT=str(free_port()),
        SIDECAR_ADMIN_PORT=str(free_port()),
        SIDECAR_XDS_PORT=str(free_port()),
        SIDECAR_XDS_HTTP_PORT=str(free_port()),
        SIDECAR_AUTHZ_PORT=str(free_port()),
        SIDECAR_AUTHZ_HTTP_PORT=str(free_port()),
        SIDECAR_AUTHZ_HTTP_CHECK_PORT=str(free_port()),
        SIDECAR_JWT_SECRET=tokens.TEST_SECRET.decode(),
        SIDECAR_TLS_CERT=str(cert),
        SIDECAR_TLS_KEY=str(key),
        SIDECAR_TLS_SDS_DIR=str(tmp_path / "sds"),
    )
    return env


def test_sidecar_up_serves_https(tmp_path: Path) -> None:
    ca = Ca(tmp_path / "pki")
    server = ca.server()
    upstream = Upstream("orders").start()
    catalog = write_catalog(
        tmp_path,
        [{"service_name": "orders", "base_path": "/orders", "internal_url": upstream.url}],
        {"admin": ["*"]},
    )
    env = up_env(tmp_path, server.cert_file, server.key_file)
    port = int(env["SIDECAR_LISTENER_PORT"])
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "up", "--catalog", str(catalog)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        def printed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sidecar up exited:\n{log.read_text()}")
            return "Ctrl-C stops everything." in log.read_text()

        wait_until(printed, timeout=60, what="sidecar up to be ready")
        assert f"Envoy:        https://127.0.0.1:{port}" in log.read_text()
        answer = https_get(port, "/orders/1", ca.ca_file, tokens.bearer())
        assert answer.status == 200, answer
        assert https_get(port, "/orders/1", ca.ca_file).status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        upstream.stop()


def test_sidecar_up_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    ca = Ca(tmp_path / "pki")
    server, other = ca.server(), ca.server("other")
    catalog = write_catalog(
        tmp_path, [{"service_name": "a", "base_path": "/a", "internal_url": "http://10.0.0.1:1"}]
    )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "up", "--catalog", str(catalog)],
        env=up_env(tmp_path, server.cert_file, other.key_file),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--tls-key: {other.key_file}: the key does not match" in done.stderr
