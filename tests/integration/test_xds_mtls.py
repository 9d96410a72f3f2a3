"""ADS over mTLS: a stream authenticated by a client certificate must name a node the
certificate names (else PERMISSION_DENIED, counted and listed), its proxy shows as
authenticated, and its NACK vetoes a version where an unauthenticated one does not."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from tests.support.ports import free_port
from tests.support.snapshots import snap
from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.fleet import Fleet
from xds_server.metrics import XdsMetrics
from xds_server.observers import MetricsObserver, Observers
from xds_server.proxies import ProxyRegistry
from xds_server.server import AdsService

CDS = typeurls.CLUSTER
V1 = snap("a")
V2 = snap("a", "b")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Pki:
    """A CA, and certificates it signs: the server's (localhost) and clients' (by SAN)."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca = (
            self._builder(_name("xds test CA"), self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name("xds test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=1))
        )

    def issue(self, cn: str, sans: list[str], usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(_name(cn), key)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _key_pem(key), _pem(cert)


class Server:
    def __init__(self, pki: Pki) -> None:
        self.cache = SnapshotCache()
        self.cache.set(V1)
        self.registry = CollectorRegistry()
        self.proxies = ProxyRegistry()
        metrics = XdsMetrics(self.registry)
        self.fleet = Fleet(self.cache, metrics, logging.getLogger("test"), True)
        observers = Observers(MetricsObserver(metrics), self.fleet)
        self.service = AdsService(self.cache, self.proxies, observers)
        self.grpc = grpc.aio.server()
        self.grpc.add_generic_rpc_handlers((self.service.handler(),))
        key, cert = pki.issue("localhost", ["localhost"], ExtendedKeyUsageOID.SERVER_AUTH)
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=_pem(pki.ca), require_client_auth=True
        )
        self.tls_port = free_port()
        self.grpc.add_secure_port(f"127.0.0.1:{self.tls_port}", credentials)
        self.plain_port = free_port()
        self.grpc.add_insecure_port(f"127.0.0.1:{self.plain_port}")


def channel(server: Server, pki: Pki, client: tuple[bytes, bytes] | None) -> grpc.aio.Channel:
    if client is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{server.plain_port}")
    key, cert = client
    credentials = grpc.ssl_channel_credentials(_pem(pki.ca), key, cert)
    return grpc.aio.secure_channel(
        f"localhost:{server.tls_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


class Client:
    """A SotW stream asking for clusters as `node_id`; `answer` ACKs or NACKs the last one."""

    def __init__(self, ch: grpc.aio.Channel, node_id: str) -> None:
        self._out: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        node = base_pb2.Node(id=node_id, user_agent_name="envoy")
        self._out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=CDS, node=node))
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        self.call = stub.StreamAggregatedResources(self._requests())

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self._out.get()

    async def read(self) -> discovery_pb2.DiscoveryResponse:
        resp: discovery_pb2.DiscoveryResponse = await asyncio.wait_for(self.call.read(), 10)
        return resp

    def answer(self, resp: discovery_pb2.DiscoveryResponse, acked: str, error: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=CDS, response_nonce=resp.nonce, version_info=acked
        )
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._out.put_nowait(req)


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def nack_v2(server: Server, client: Client) -> None:
    """The client ACKs V1's clusters, is sent V2's, and NACKs them."""

    def nacks() -> float:
        return server.registry.get_sample_value("xds_nacks_total", {"type": "clusters"}) or 0.0

    before = nacks()
    first = await client.read()
    client.answer(first, first.version_info)
    await until(lambda: server.proxies.report(V1)[0].types["clusters"].acked_version, "the ACK")
    server.cache.set(V2)
    second = await client.read()
    assert second.version_info == V2.versions[CDS]
    client.answer(second, first.version_info, "rejected")
    await until(lambda: nacks() > before, "the NACK")


def test_a_certificate_binds_the_node_and_an_authenticated_envoy_vetoes(tmp_path: Path) -> None:
    pki = Pki()
    edge = pki.issue("edge-1", ["edge-1"], ExtendedKeyUsageOID.CLIENT_AUTH)

    async def scenario() -> None:
        server = Server(pki)  # on the running loop
        await server.grpc.start()
        try:
            # A certificate for edge-1 cannot speak for edge-2.
            async with channel(server, pki, edge) as ch:
                call = Client(ch, "edge-2").call
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(call.read(), 10)
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert (
                server.registry.get_sample_value(
                    "xds_refused_streams_total", {"reason": "node_not_in_certificate"}
                )
                == 1
            )
            (listed,) = server.proxies.refusals()
            assert (listed.node_id, listed.reason) == ("edge-2", "node_not_in_certificate")

            # No certificate: no stream on the TLS port.
            async with grpc.aio.secure_channel(
                f"localhost:{server.tls_port}",
                grpc.ssl_channel_credentials(_pem(pki.ca)),
            ) as ch:
                call = Client(ch, "edge-1").call
                with pytest.raises(grpc.aio.AioRpcError) as no_cert:
                    await asyncio.wait_for(call.read(), 10)
                assert no_cert.value.code() is grpc.StatusCode.UNAVAILABLE

            # The same NACK over the plain port: not authenticated, no veto.
            async with channel(server, pki, None) as ch:
                plain = Client(ch, "edge-9")
                await nack_v2(server, plain)
                (proxy,) = server.proxies.report(V2)
                assert not proxy.authenticated
                assert server.cache.current() is V2 and server.fleet.report() == ()
                plain.call.cancel()
            server.cache.set(V1)

            # Authenticated as edge-1: listed so, and its NACK rolls the fleet back.
            async with channel(server, pki, edge) as ch:
                client = Client(ch, "edge-1")
                await nack_v2(server, client)
                (proxy,) = server.proxies.report(server.cache.current())
                assert proxy.authenticated and proxy.node_id == "edge-1"
                assert proxy.peer.startswith("ipv4:127.0.0.1:")
                assert server.cache.current() is V1
                (rejected,) = server.fleet.report()
                assert rejected.version == V2.version and rejected.rolled_back_to == V1.version
                client.call.cancel()
        finally:
            await server.grpc.stop(None)

    asyncio.run(scenario())
