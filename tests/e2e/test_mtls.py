"""The control plane's channels under mTLS: an Envoy with a client certificate the servers'
CA signed reaches the xDS server and ext_authz and serves traffic; a peer without one (plain
text, TLS without a certificate, or a certificate another CA signed) opens no ADS stream and
gets no check answered, on either ext_authz transport."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar import commands
from sidecar.bootstrap import BootstrapOptions, ClientTls, render_json
from sidecar_shared import supervise
from sidecar_shared.contract import AUTHZ_TRANSPORTS, CHECK_PATH_PREFIX
from sidecar_shared.tls import ServerTls
from tests.support import http as test_http
from tests.support import stack, tokens, wait
from tests.support.mtls import Ca, Issued
from tests.support.ports import free_port
from xds_server import typeurls

NODE = "sidecar-envoy"


@dataclass(frozen=True)
class Pki:
    ca: Ca
    xds: ServerTls
    authz: ServerTls
    envoy: Issued
    stranger: Issued  # a client certificate another CA signed


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Ca(tmp_path)
    other = Ca(tmp_path, "another CA")
    return Pki(
        ca,
        ca.server_tls(name="xds"),
        ca.server_tls(name="authz"),
        ca.client(NODE),
        other.client("stranger"),
    )


def tls_args(prefix: str, tls: ServerTls) -> list[str]:
    return [
        *(f"--{prefix}-tls-cert", str(tls.cert), f"--{prefix}-tls-key", str(tls.key)),
        *(f"--{prefix}-tls-client-ca", str(tls.client_ca)),
    ]


@pytest.fixture
def servers(
    sample_catalog: Path, tmp_path: Path, transport: str, pki: Pki
) -> Iterator[tuple[stack.XdsServer, stack.Authz]]:
    xds = stack.start_xds(
        sample_catalog, tmp_path, transport=transport, args=tls_args("xds", pki.xds)
    )
    authz = stack.start_authz(tmp_path, args=tls_args("authz", pki.authz))
    yield xds, authz
    xds.proc.stop()
    authz.proc.stop()


def start_envoy(
    xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path, tls: ClientTls
) -> tuple[stack.Proc, int]:
    """Envoy with this client certificate, and its admin port."""
    admin_port = free_port()
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(
        render_json(
            BootstrapOptions(
                node_id=NODE,
                xds_port=xds.port,
                admin_port=admin_port,
                authz_port=authz.port,
                authz_http_check_port=authz.check_port,
                authz_transport=xds.transport,
                tls=tls,
            )
        )
    )
    argv = commands.envoy(supervise.find_envoy(), bootstrap, "warning")
    return stack.start("envoy", argv, tmp_path), admin_port


def through_envoy(admin_port: int, path: str, token: bool) -> int | None:
    """The status of a request through the Envoy with this admin port (None: no answer, or no
    listener bound yet)."""
    port = stack.bound_port(admin_port)
    if port is None:
        return None
    headers = tokens.bearer() if token else None
    resp = test_http.try_get(f"http://127.0.0.1:{port}{path}", headers)
    return resp.status if resp is not None else None


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_an_envoy_with_a_client_certificate_is_configured_and_served_over_mtls(
    servers: tuple[stack.XdsServer, stack.Authz], tmp_path: Path, pki: Pki
) -> None:
    xds, authz = servers
    tls = ClientTls(str(pki.envoy.cert_file), str(pki.envoy.key_file), str(pki.ca.ca_file))
    envoy, admin_port = start_envoy(xds, authz, tmp_path, tls)
    try:
        wait.wait_until(
            lambda: through_envoy(admin_port, "/orders/1", token=True) == 200,
            timeout=20,
            what=f"a request through Envoy, allowed by ext_authz over mTLS\n{envoy.output()}",
        )
        assert through_envoy(admin_port, "/orders/1", token=False) == 401
        assert xds.synced(NODE)
    finally:
        envoy.stop()


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_an_envoy_without_the_right_certificate_gets_no_configuration(
    servers: tuple[stack.XdsServer, stack.Authz], tmp_path: Path, pki: Pki
) -> None:
    xds, authz = servers
    # A certificate another CA signed: the xDS server refuses the handshake.
    tls = ClientTls(str(pki.stranger.cert_file), str(pki.stranger.key_file), str(pki.ca.ca_file))
    envoy, admin_port = start_envoy(xds, authz, tmp_path, tls)
    try:
        wait.wait_until(
            lambda: connections_to_xds(admin_port) >= 3,
            timeout=20,
            what=f"three connections from Envoy to the xDS server\n{envoy.output()}",
        )
        assert xds.status()["proxies"] == [], "a stranger's Envoy opened an ADS stream"
        assert stack.bound_port(admin_port) is None, "a stranger's Envoy got a listener"
    finally:
        envoy.stop()


def connections_to_xds(admin_port: int) -> int:
    """How many connections Envoy opened to the xDS server so far."""
    resp = test_http.try_get(
        f"http://127.0.0.1:{admin_port}/stats?filter=^cluster.xds_cluster.upstream_cx_total$"
    )
    if resp is None or resp.status != 200:
        return 0
    _, _, value = resp.body.decode().partition(":")
    return int(value) if value.strip().isdigit() else 0


def _channels(port: int, pki: Pki) -> list[tuple[str, grpc.Channel]]:
    """Channels to a TLS port on 127.0.0.1 from peers the server must refuse."""
    ca = pki.ca.ca_file.read_bytes()
    stranger = (pki.stranger.key_file.read_bytes(), pki.stranger.cert_file.read_bytes())
    target = f"127.0.0.1:{port}"
    return [
        ("plain text", grpc.insecure_channel(target)),
        ("TLS, no certificate", grpc.secure_channel(target, grpc.ssl_channel_credentials(ca))),
        (
            "another CA's certificate",
            grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, *stranger)),
        ),
    ]


def _client_channel(port: int, pki: Pki) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        pki.ca.ca_file.read_bytes(),
        pki.envoy.key_file.read_bytes(),
        pki.envoy.cert_file.read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _ads_request() -> Iterator[discovery_pb2.DiscoveryRequest]:
    yield discovery_pb2.DiscoveryRequest(node={"id": NODE}, type_url=typeurls.CLUSTER)


def test_no_ads_stream_without_a_client_certificate(
    servers: tuple[stack.XdsServer, stack.Authz], pki: Pki
) -> None:
    xds, _ = servers
    for what, channel in _channels(xds.port, pki):
        with channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(stub.StreamAggregatedResources(_ads_request(), timeout=5)))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
    # The same call with the CA's client certificate gets the clusters.
    with _client_channel(xds.port, pki) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        answer = next(iter(stub.StreamAggregatedResources(_ads_request(), timeout=5)))
        assert answer.type_url == typeurls.CLUSTER and answer.resources


def _check(channel: grpc.Channel) -> external_auth_pb2.CheckResponse:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/orders/1"
    return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def test_no_grpc_check_or_health_answer_without_a_client_certificate(
    servers: tuple[stack.XdsServer, stack.Authz], pki: Pki
) -> None:
    _, authz = servers
    for what, channel in _channels(authz.port, pki):
        with channel:
            with pytest.raises(grpc.RpcError) as refused:
                _check(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
    with _client_channel(authz.port, pki) as channel:
        assert _check(channel).HasField("denied_response")  # answered: no policy, no token


def _http_check(port: int, context: ssl.SSLContext | None) -> int:
    """The status of one HTTP check on 127.0.0.1:`port`; raises OSError when refused."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", CHECK_PATH_PREFIX + "/orders/1")
        return conn.getresponse().status
    finally:
        conn.close()


def test_no_http_check_answered_without_a_client_certificate(
    servers: tuple[stack.XdsServer, stack.Authz], pki: Pki
) -> None:
    _, authz = servers
    with pytest.raises((OSError, http.client.HTTPException)):
        _http_check(authz.check_port, None)  # plain text to a TLS port
    no_cert = ssl.create_default_context(cafile=pki.ca.ca_file)
    stranger = ssl.create_default_context(cafile=pki.ca.ca_file)
    stranger.load_cert_chain(pki.stranger.cert_file, pki.stranger.key_file)
    for context in (no_cert, stranger):
        with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout)):
            _http_check(authz.check_port, context)
    envoy = ssl.create_default_context(cafile=pki.ca.ca_file)
    envoy.load_cert_chain(pki.envoy.cert_file, pki.envoy.key_file)
    assert _http_check(authz.check_port, envoy) in (401, 403)
