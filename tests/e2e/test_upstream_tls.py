"""TLS to upstreams (a service's `tls`), with a real Envoy and an HTTPS upstream that requires a
client certificate: Envoy presents the catalog's client certificate and verifies the upstream
against the catalog's CA and name; a wrong CA or a certificate for another name answers 503;
`sidecar validate` accepts the catalog only while its files are usable; a reload whose files
are not keeps the last good configuration serving; and replacing the client certificate's
files rotates it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import stack, tokens
from tests.support.catalogs import write_catalog, write_json
from tests.support.http import try_get
from tests.support.https import TlsUpstream, replace_by_rename, tls_upstream
from tests.support.mtls import Ca, Issued
from tests.support.wait import wait_until

PATH = "/secure/1"


@dataclass
class Pki:
    ca: Ca  # signs the upstream's certificate and Envoy's client certificate
    other: Ca  # signs nothing anyone uses here
    upstream: Issued  # for 127.0.0.1 and localhost
    wrong_name: Issued  # for another name
    client: Issued
    expired: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Ca(tmp_path / "pki")
    return Pki(
        ca,
        Ca(tmp_path / "pki-other", "another CA"),
        ca.server("upstream"),
        ca.issue("wrong", dns=("wrong.example",), client=False),
        ca.client("envoy-client"),
        ca.issue("expired-client", dns=("envoy",), client=True, expired=True),
    )


def service(port: int, **tls: Any) -> dict[str, Any]:
    return {
        "service_name": "secure",
        "base_path": "/secure",
        "internal_url": f"https://127.0.0.1:{port}",
        "retry_policy": None,
        "tls": tls,
    }


def mtls(pki: Pki, ca: Ca | None = None, client: Issued | None = None) -> dict[str, Any]:
    client = client or pki.client
    return {
        "ca_file": str((ca or pki.ca).ca_file),
        "cert_file": str(client.cert_file),
        "key_file": str(client.key_file),
    }


@dataclass
class Stack:
    xds: stack.XdsServer
    envoy: stack.Envoy
    catalog: Path

    def status(self) -> int | None:
        resp = try_get(self.envoy.url + PATH, tokens.bearer())
        return resp.status if resp is not None else None

    def body(self) -> bytes:
        resp = try_get(self.envoy.url + PATH, tokens.bearer())
        return resp.body if resp is not None else b""

    def write(self, svc: dict[str, Any]) -> None:
        write_json(self.catalog, {"services": [svc], "roles": {"admin": ["*"]}})


@pytest.fixture
def upstream(pki: Pki) -> Iterator[TlsUpstream]:
    with tls_upstream(pki.upstream, client_ca=pki.ca.ca_file) as server:
        yield server


@contextmanager
def start(tmp_path: Path, svc: dict[str, Any]) -> Iterator[Stack]:
    catalog = write_catalog(tmp_path, [svc], {"admin": ["*"]})
    xds = stack.start_xds(
        catalog,
        tmp_path,
        args=["--tls-sds-dir", str(tmp_path / "sds"), "--reload-debounce-ms", "50"],
    )
    authz = stack.start_authz(tmp_path)
    envoy = stack.start_envoy(xds, tmp_path, authz=authz)
    try:
        yield Stack(xds, envoy, catalog)
    finally:
        envoy.proc.stop()
        authz.proc.stop()
        xds.proc.stop()


def test_an_upstream_that_requires_a_client_certificate_answers_through_envoy(
    tmp_path: Path, pki: Pki, upstream: TlsUpstream
) -> None:
    with start(tmp_path, service(upstream.port, **mtls(pki))) as up:
        wait_until(lambda: up.status() == 200, timeout=30, what="200 from the mTLS upstream")
        assert b"client envoy-client" in up.body()
        # Another client certificate, renamed into place: new connections present it.
        newer = pki.ca.client("envoy-client-2")
        replace_by_rename(newer.key_file, pki.client.key_file)
        replace_by_rename(newer.cert_file, pki.client.cert_file)
        wait_until(
            lambda: b"client envoy-client-2" in up.body(),
            timeout=30,
            what="the upstream shown the new client certificate",
        )


def test_a_wrong_ca_or_name_gets_503_and_the_right_ones_200(
    tmp_path: Path, pki: Pki, upstream: TlsUpstream
) -> None:
    with start(tmp_path, service(upstream.port, **mtls(pki, ca=pki.other))) as up:
        wait_until(lambda: up.status() == 503, timeout=30, what="503: the upstream not trusted")
        up.write(service(upstream.port, **mtls(pki)))
        wait_until(lambda: up.status() == 200, timeout=30, what="200 with the right CA")
        # An SNI the upstream's certificate does not name: not the upstream we meant.
        up.write(service(upstream.port, **mtls(pki), sni="wrong.example"))
        wait_until(lambda: up.status() == 503, timeout=30, what="503: the name does not match")


def test_an_upstream_with_a_certificate_for_another_name_gets_503(tmp_path: Path, pki: Pki) -> None:
    with (
        tls_upstream(pki.wrong_name, client_ca=pki.ca.ca_file) as wrong,
        start(tmp_path, service(wrong.port, **mtls(pki))) as up,
    ):
        wait_until(lambda: up.status() == 503, timeout=30, what="503: wrong name")
        # Unverified (verify false) it is reached: the check above is the name's.
        up.write(
            service(
                wrong.port,
                verify=False,
                cert_file=str(pki.client.cert_file),
                key_file=str(pki.client.key_file),
            )
        )
        wait_until(lambda: up.status() == 200, timeout=30, what="200 unverified")


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_accepts_the_catalog_only_while_its_files_are_usable(
    tmp_path: Path, pki: Pki
) -> None:
    path = tmp_path / "catalog.json"
    other_key = pki.ca.client("other").key_file
    missing = tmp_path / "missing.pem"
    cases: list[tuple[dict[str, Any], str]] = [
        (mtls(pki, ca=pki.other), ""),  # valid files, whoever signed them
        ({**mtls(pki), "ca_file": str(missing)}, f"services[0].tls.ca_file: {missing}: cannot"),
        (
            {**mtls(pki), "key_file": str(other_key)},
            f"services[0].tls.key_file: {other_key}: the key does not match",
        ),
        (
            mtls(pki, client=pki.expired),
            f"services[0].tls.cert_file: {pki.expired.cert_file}: the certificate expired",
        ),
        ({**mtls(pki), "cert_file": str(pki.client.key_file)}, "not a PEM certificate"),
        ({"cert_file": str(pki.client.cert_file)}, "services[0].tls: "),
    ]
    for tls, expected in cases:
        write_json(path, {"services": [service(8443, **tls)], "roles": {}})
        done = validate(path)
        out = done.stdout + done.stderr
        assert done.returncode == (1 if expected else 0), out
        assert expected in out, out


def test_a_reload_with_unusable_files_keeps_the_last_good_configuration(
    tmp_path: Path, pki: Pki, upstream: TlsUpstream
) -> None:
    with start(tmp_path, service(upstream.port, **mtls(pki))) as up:
        wait_until(lambda: up.status() == 200, timeout=30, what="200 from the mTLS upstream")
        version = up.xds.version()
        mismatched = {**mtls(pki), "key_file": str(pki.expired.key_file)}
        up.write(service(upstream.port, **mismatched, sni="localhost"))

        def refused() -> list[str] | None:
            catalog = up.xds.status()["catalog"]
            return None if catalog["valid"] else list(catalog["errors"])

        errors = wait_until(refused, timeout=30, what="the reload refused")
        assert any(
            "services[0].tls.key_file" in e and str(pki.expired.key_file) in e for e in errors
        ), errors
        assert up.xds.version() == version
        assert up.status() == 200
