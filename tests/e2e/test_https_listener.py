"""HTTPS on Envoy's listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`), with a real Envoy:
requests over TLS with HTTP/1.1 and HTTP/2 are authorized as over plain HTTP; the certificate
presented is the one configured; replacing the files (by rename, as Envoy watches for) rotates
it for new connections while a request in flight on an old one completes; a client CA makes a
client without a certificate fail at the handshake; and a file Envoy could not use is refused
at start, naming it."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar import commands
from tests.support import stack, tokens
from tests.support.catalogs import write_catalog
from tests.support.http import try_get
from tests.support.https import (
    client_context,
    connect,
    h2_get,
    https_get,
    presented_cert,
    replace_by_rename,
)
from tests.support.mtls import Ca, Issued
from tests.support.ports import free_port
from tests.support.upstreams import Upstream
from tests.support.wait import wait_until
from xds_server.resources.tls import DEFAULT_CIPHERS

PATH = "/orders/1"


def der(issued: Issued) -> bytes:
    return x509.load_pem_x509_certificate(issued.cert_file.read_bytes()).public_bytes(Encoding.DER)


@dataclass
class Served:
    envoy: stack.Envoy
    ca: Ca
    live: Issued  # the files the settings name
    upstream: Upstream

    @property
    def port(self) -> int:
        return self.envoy.listener_port


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream("orders").start()
    yield server
    server.stop()


def tls_args(live: Issued, tmp_path: Path, client_ca: Path | None = None) -> list[str]:
    return [
        *("--tls-cert", str(live.cert_file), "--tls-key", str(live.key_file)),
        *(("--tls-client-ca", str(client_ca)) if client_ca else ()),
        *("--tls-sds-dir", str(tmp_path / "sds")),
    ]


@contextmanager
def serve(
    tmp_path: Path,
    upstream: Upstream,
    ca: Ca,
    live: Issued,
    client_ca: bool = False,
    delta: bool = False,
) -> Iterator[Served]:
    """The stack serving HTTPS with `live`'s files, which `ca` signed."""
    catalog = write_catalog(
        tmp_path,
        [
            {
                "service_name": "orders",
                "base_path": "/orders",
                "internal_url": upstream.url,
                "timeout_ms": 60_000,
                "retry_policy": None,
            }
        ],
        {"admin": ["*"]},
    )
    xds = stack.start_xds(
        catalog, tmp_path, args=tls_args(live, tmp_path, ca.ca_file if client_ca else None)
    )
    authz = stack.start_authz(tmp_path)
    envoy = stack.start_envoy(xds, tmp_path, authz=authz, delta=delta)
    try:
        yield Served(envoy, ca, live, upstream)
    finally:
        envoy.proc.stop()
        authz.proc.stop()
        xds.proc.stop()


@pytest.fixture
def served(tmp_path: Path, upstream: Upstream, protocol: str) -> Iterator[Served]:
    ca = Ca(tmp_path / "pki")
    with serve(tmp_path, upstream, ca, ca.server("listener"), delta=protocol == "delta") as up:
        yield up


@pytest.fixture
def served_mtls(tmp_path: Path, upstream: Upstream) -> Iterator[Served]:
    ca = Ca(tmp_path / "pki")
    with serve(tmp_path, upstream, ca, ca.server("listener"), client_ca=True) as up:
        yield up


def answered(served: Served, token: bool = True, client: Issued | None = None) -> int | None:
    try:
        headers = tokens.bearer() if token else None
        return https_get(served.port, PATH, served.ca.ca_file, headers, client).status
    except (ssl.SSLError, OSError):
        return None


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_https_with_http1_and_http2_presents_our_certificate(served: Served) -> None:
    wait_until(lambda: answered(served) == 200, timeout=30, what="an HTTPS request answered 200")
    h1 = https_get(served.port, PATH, served.ca.ca_file, tokens.bearer())
    assert (h1.status, h1.alpn, h1.peer_cert) == (200, "http/1.1", der(served.live))
    assert answered(served, token=False) == 401
    h2 = h2_get(served.port, PATH, served.ca.ca_file, tokens.bearer())
    assert (h2.status, h2.alpn) == (200, "h2")
    assert h2_get(served.port, PATH, served.ca.ca_file).status == 401
    # Plain HTTP on the TLS port gets no answer.
    assert try_get(f"http://127.0.0.1:{served.port}{PATH}") is None
    # A TLS 1.2 client gets one of the default cipher suites.
    tls12 = client_context(served.ca.ca_file)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with connect(served.port, tls12) as conn:
        assert conn.version() == "TLSv1.2"
        assert (conn.cipher() or ("",))[0] in DEFAULT_CIPHERS


def test_replacing_the_files_rotates_the_certificate_without_dropping_a_request(
    served: Served,
) -> None:
    wait_until(lambda: answered(served) == 200, timeout=30, what="an HTTPS request answered 200")
    before = der(served.live)
    served.upstream.behave("slow", delay_s=4.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(https_get, served.port, PATH, served.ca.ca_file, tokens.bearer())
        wait_until(lambda: served.upstream.count() >= 2, timeout=20, what="the slow request")
        new = served.ca.server("listener-2")
        # Key, then certificate, each renamed into place (a half-done rotation in between).
        replace_by_rename(new.key_file, served.live.key_file)
        replace_by_rename(new.cert_file, served.live.cert_file)
        wait_until(
            lambda: presented_cert(served.port, served.ca.ca_file) == der(new),
            timeout=20,
            what="new connections shown the new certificate",
        )
        old = in_flight.result(timeout=30)
    # The request that was in flight on a connection made with the old certificate completed.
    assert (old.status, old.peer_cert) == (200, before)
    served.upstream.behave("ok")
    assert answered(served) == 200


def test_a_directory_symlink_swap_rotates_the_certificate(
    tmp_path: Path, upstream: Upstream
) -> None:
    """Kubernetes' secret volumes: the files are symlinks through `..data`, a symlink to a
    directory, which is swapped (renamed over) to rotate cert and key at once."""
    ca = Ca(tmp_path / "pki")
    mount = tmp_path / "secret"
    mount.mkdir()

    def publish(issued: Issued, version: str) -> None:
        data = mount / version
        data.mkdir()
        replace_by_rename(issued.cert_file, data / "tls.crt")
        replace_by_rename(issued.key_file, data / "tls.key")
        (mount / "..data_tmp").symlink_to(version)
        os.replace(mount / "..data_tmp", mount / "..data")

    first = ca.server("first")
    publish(first, "..v1")
    for name in ("tls.crt", "tls.key"):
        (mount / name).symlink_to(f"..data/{name}")
    live = Issued(mount / "tls.crt", mount / "tls.key")
    with serve(tmp_path, upstream, ca, live) as served:
        wait_until(lambda: answered(served) == 200, timeout=30, what="HTTPS answered 200")
        assert presented_cert(served.port, ca.ca_file) == der(first)
        second = ca.server("second")
        publish(second, "..v2")
        wait_until(
            lambda: presented_cert(served.port, ca.ca_file) == der(second),
            timeout=20,
            what="new connections shown the new certificate",
        )
        assert answered(served) == 200


def test_a_client_certificate_is_required_when_a_client_ca_is_set(served_mtls: Served) -> None:
    client = served_mtls.ca.client("a-client")
    wait_until(
        lambda: answered(served_mtls, client=client) == 200,
        timeout=30,
        what="an HTTPS request with a client certificate answered 200",
    )
    assert answered(served_mtls, token=False, client=client) == 401
    # Without a certificate: the handshake fails (TLS 1.3 reports it at the first read).
    with pytest.raises((ssl.SSLError, OSError)):
        https_get(served_mtls.port, PATH, served_mtls.ca.ca_file, tokens.bearer())
    stranger = Ca(served_mtls.ca.directory / "other", "another CA").client("stranger")
    with pytest.raises((ssl.SSLError, OSError)):
        https_get(served_mtls.port, PATH, served_mtls.ca.ca_file, tokens.bearer(), stranger)


def start_failure(tmp_path: Path, *args: str) -> str:
    """What an xDS server given `args` prints as it refuses to start (exit 2)."""
    argv = commands.xds_server(
        *("--catalog", str(tmp_path / "none.json")),
        *("--xds-port", str(free_port()), "--xds-http-port", str(free_port())),
        *args,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    return done.stderr


def test_unusable_files_are_refused_at_start_naming_them(tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    good, other = ca.server("good"), ca.server("other")
    expired = ca.issue("expired", dns=("localhost",), client=False, expired=True)
    missing = tmp_path / "missing.pem"
    unreadable = tmp_path / "a-directory.pem"  # unreadable as a file, even by root
    unreadable.mkdir()
    cases = [
        (
            ("--tls-cert", str(good.cert_file), "--tls-key", str(unreadable)),
            f"{unreadable}: cannot be read",
        ),
        (
            ("--tls-cert", str(missing), "--tls-key", str(good.key_file)),
            f"{missing}: cannot be read",
        ),
        (
            ("--tls-cert", str(good.cert_file), "--tls-key", str(other.key_file)),
            f"{other.key_file}: the key does not match",
        ),
        (
            ("--tls-cert", str(expired.cert_file), "--tls-key", str(expired.key_file)),
            f"{expired.cert_file}: the certificate expired",
        ),
        (
            ("--tls-cert", str(good.key_file), "--tls-key", str(good.key_file)),
            f"{good.key_file}: not a PEM certificate",
        ),
        (("--tls-cert", str(good.cert_file)), "--tls-cert and --tls-key go together"),
    ]
    for args, expected in cases:
        assert expected in start_failure(tmp_path, *args), args


def test_plain_http_is_redirected_to_https(tmp_path: Path, upstream: Upstream) -> None:
    ca = Ca(tmp_path / "pki")
    live = ca.server("listener")
    catalog = write_catalog(
        tmp_path,
        [{"service_name": "orders", "base_path": "/orders", "internal_url": upstream.url}],
        {"admin": ["*"]},
    )
    # The redirect names the HTTPS port, so the listener's is chosen here (not by the OS).
    https_port, http_port = free_port(), free_port()
    xds = stack.start_xds(
        catalog,
        tmp_path,
        ports=(free_port(), free_port(), https_port),
        args=[*tls_args(live, tmp_path), "--http-redirect", str(http_port)],
    )
    authz = stack.start_authz(tmp_path)
    envoy = stack.start_envoy(xds, tmp_path, authz=authz)
    try:

        def redirected() -> tuple[int, str | None] | None:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            try:
                conn.request("GET", "/orders/1?x=1", headers=tokens.bearer())
                resp = conn.getresponse()
                resp.read()
                return resp.status, resp.getheader("location")
            except OSError:
                return None
            finally:
                conn.close()

        wait_until(lambda: redirected() is not None, timeout=30, what="the redirect listener")
        assert redirected() == (301, f"https://127.0.0.1:{https_port}/orders/1?x=1")
        assert upstream.count() == 0  # nothing was forwarded over plain HTTP
        wait_until(lambda: answered(Served(envoy, ca, live, upstream)) == 200, timeout=30)
    finally:
        envoy.proc.stop()
        authz.proc.stop()
        xds.proc.stop()


def rotation_failures(served: Served) -> int:
    stats = served.envoy.admin("/stats?filter=key_rotation_failed").body.decode()
    return sum(
        int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if "listener-cert" in line
    )


def test_a_bad_replacement_keeps_the_last_good_certificate(served: Served, tmp_path: Path) -> None:
    """Envoy 1.40 refuses a pair it cannot load (the key of another certificate, a file that
    is not PEM), logs it, counts it in `sds.<secret>.key_rotation_failed` and keeps serving the
    certificate it had."""
    wait_until(lambda: answered(served) == 200, timeout=30, what="an HTTPS request answered 200")
    before = der(served.live)
    other = served.ca.server("other")
    replace_by_rename(other.key_file, served.live.key_file)  # not the certificate's key
    wait_until(lambda: rotation_failures(served) >= 1, timeout=20, what="the rotation refused")
    assert presented_cert(served.port, served.ca.ca_file) == before
    assert answered(served) == 200
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    failed = rotation_failures(served)
    replace_by_rename(garbage, served.live.cert_file)
    wait_until(lambda: rotation_failures(served) > failed, timeout=20, what="refused again")
    assert presented_cert(served.port, served.ca.ca_file) == before
    # The matching certificate completes the rotation.
    replace_by_rename(other.cert_file, served.live.cert_file)
    wait_until(
        lambda: presented_cert(served.port, served.ca.ca_file) == der(other),
        timeout=20,
        what="the new certificate",
    )
