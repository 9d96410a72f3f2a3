"""What a peer may make the xDS server do: the node recorded whatever the type of the first
request, a node id bound to the client certificate, limits on streams and subscribed names, and
log lines that carry a peer's text cut and throttled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from tests.support.snapshots import snap
from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.metrics import XdsMetrics
from xds_server.observers import LogBudget, LogObserver, MetricsObserver, Nack, Observers
from xds_server.proxies import ProxyRegistry
from xds_server.server import AdsService, StreamLimits, identities

CDS = typeurls.CLUSTER
RUNTIME = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class Context:
    def __init__(
        self, peer: str = "ipv4:127.0.0.1:5", auth: Mapping[str, list[bytes]] | None = None
    ):
        self._peer = peer
        self._auth = auth or {}
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> Mapping[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()


def node(node_id: str = "edge-1") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster="edge", user_agent_name="envoy")


class Rig:
    def __init__(self, limits: StreamLimits | None = None, spare: int = 1000) -> None:
        self.cache = SnapshotCache()
        self.cache.set(snap("a", "b"))
        self.registry = CollectorRegistry()
        self.proxies = ProxyRegistry()
        self.service = AdsService(
            self.cache,
            self.proxies,
            MetricsObserver(XdsMetrics(self.registry)),
            limits or StreamLimits(),
            spare,
        )

    def refused(self, reason: str) -> float | None:
        return self.registry.get_sample_value("xds_refused_streams_total", {"reason": reason})

    async def sotw(
        self,
        requests: Iterable[discovery_pb2.DiscoveryRequest],
        context: Context,
        hold: asyncio.Event | None = None,
    ) -> list[discovery_pb2.DiscoveryResponse]:
        async def stream() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            for r in requests:
                yield r
            if hold is not None:
                await hold.wait()

        out = []
        async for raw in self.service.StreamAggregatedResources(stream(), context):
            out.append(discovery_pb2.DiscoveryResponse.FromString(raw))
        return out


@pytest.mark.parametrize("first", [RUNTIME, SECRET, "", "type.googleapis.com/made.Up"])
def test_a_first_request_for_a_type_we_do_not_serve_names_the_node_and_the_stream_lives(
    first: str,
) -> None:
    rig = Rig()
    context = Context()
    requests = [
        discovery_pb2.DiscoveryRequest(type_url=first, node=node(), resource_names=["layer"]),
        discovery_pb2.DiscoveryRequest(type_url=CDS),
    ]
    out = asyncio.run(rig.sotw(requests, context))
    assert context.aborted == []
    assert [r.type_url for r in out] == [CDS]


def test_a_certificate_binds_the_node_id() -> None:
    assert identities({"x509_subject_alternative_name": [b"edge-1", b"spiffe://x/edge-1"]}) == (
        "edge-1",
        "spiffe://x/edge-1",
    )
    assert identities({"x509_common_name": [b"edge-2"]}) == ("edge-2",)
    assert identities({"transport_security_type": [b"insecure"]}) == ()
    rig = Rig()
    certified = {"x509_subject_alternative_name": [b"edge-1"]}
    ok = Context(auth=certified)
    asyncio.run(rig.sotw([discovery_pb2.DiscoveryRequest(type_url=CDS, node=node())], ok))
    assert ok.aborted == []
    other = Context(auth=certified)
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(
            rig.sotw([discovery_pb2.DiscoveryRequest(type_url=CDS, node=node("edge-2"))], other)
        )
    assert other.aborted[0][0] is grpc.StatusCode.PERMISSION_DENIED
    assert rig.refused("node_not_in_certificate") == 1
    (refusal,) = rig.proxies.refusals()
    assert (refusal.node_id, refusal.reason) == ("edge-2", "node_not_in_certificate")


def test_streams_past_the_limits_are_refused_and_counted() -> None:
    rig = Rig(StreamLimits(total=3, per_connection=2))

    async def scenario() -> list[Context]:
        hold = asyncio.Event()
        peers = ["ipv4:127.0.0.1:1"] * 3 + ["ipv4:127.0.0.1:2"] * 2
        contexts = [Context(p) for p in peers]
        req = discovery_pb2.DiscoveryRequest(type_url=CDS, node=node())
        tasks = [asyncio.create_task(rig.sotw([req], c, hold)) for c in contexts]
        await asyncio.sleep(0)
        while len(rig.proxies) < 3 or sum(t.done() for t in tasks) < 2:
            await asyncio.sleep(0.01)
        hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return contexts

    contexts = asyncio.run(scenario())
    codes = [c.aborted[0][0] for c in contexts if c.aborted]
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert rig.refused("too_many_streams_per_connection") == 1
    assert rig.refused("too_many_streams") == 1
    assert len(rig.proxies) == 0


def test_a_sotw_subscription_to_too_many_names_is_refused() -> None:
    rig = Rig(spare=10)
    eds = typeurls.ENDPOINT
    names = [f"made-up-{i}" for i in range(2 * 2 + 11)]
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(
            rig.sotw(
                [discovery_pb2.DiscoveryRequest(type_url=eds, node=node(), resource_names=names)],
                context,
            )
        )
    assert context.aborted[0][0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rig.refused("too_many_names") == 1
    # At the limit it is served.
    ok = Context()
    asyncio.run(
        rig.sotw(
            [discovery_pb2.DiscoveryRequest(type_url=eds, node=node(), resource_names=names[:-1])],
            ok,
        )
    )
    assert ok.aborted == []


def test_nack_lines_are_cut_and_throttled(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    observer = Observers(
        LogObserver(logging.getLogger("test.nacks"), LogBudget(1.0, 5, lambda: now[0]))
    )
    error = "x" * 1_000_000
    with caplog.at_level(logging.WARNING, "test.nacks"):
        for _ in range(680):
            observer.nacked(Nack("n" * 100_000, CDS, "v", "s", error))
        now[0] = 3.0
        observer.nacked(Nack("edge", CDS, "v", "s", "boom"))
    assert len(caplog.records) == 6
    first = caplog.records[0].fields  # type: ignore[attr-defined]
    assert len(first["error"]) < 1100 and len(first["node_id"]) < 300
    assert caplog.records[-1].fields["suppressed"] == 675  # type: ignore[attr-defined]


def test_a_long_nack_message_is_kept_cut() -> None:
    from xds_server.stream_state import ERROR_CHARS, StreamState  # noqa: PLC0415

    req = discovery_pb2.DiscoveryRequest(error_detail=status_pb2.Status(message="e" * 10**6))
    error = StreamState.error_of(req)
    assert error is not None and len(error) <= ERROR_CHARS + 3
