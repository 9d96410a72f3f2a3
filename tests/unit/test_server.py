"""The ADS service's loop, with a fake stream and no gRPC: requests and snapshot changes reach
the stream in order, its responses reach Envoy, and the proxy is registered while connected.
And the fleet's memory of what every connected proxy has ACKed."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence

import grpc
import pytest
from prometheus_client import CollectorRegistry

from tests.support.translation import build_snapshot
from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.catalog import parse_catalog
from xds_server.fleet import Bounds, Fleet
from xds_server.metrics import XdsMetrics
from xds_server.observers import Ack, MetricsObserver, Nack, StreamEvent
from xds_server.proxies import ProxyRegistry, ProxyStatus
from xds_server.server import AdsService
from xds_server.snapshot import Snapshot
from xds_server.stream_state import Refused
from xds_server.translate import Options

CDS = typeurls.CLUSTER


def snap(timeout_ms: int) -> Snapshot:
    service = {
        "service_name": "a",
        "base_path": "/a",
        "internal_url": "http://127.0.0.1:8000",
        "timeout_ms": timeout_ms,
    }
    return build_snapshot(parse_catalog({"services": [service]}), Options())


class FakeStream:
    def __init__(self, status: ProxyStatus) -> None:
        self._status = status
        self.seen: list[str] = []

    @property
    def status(self) -> ProxyStatus:
        return self._status

    def on_request(self, req: str) -> Sequence[str]:
        self.seen.append(req)
        self._status.node_id = "edge-1"
        return [f"answer to {req}"]

    def on_snapshot(self) -> Sequence[str]:
        self.seen.append("snapshot")
        return ["pushed"]


class FakeContext:
    def __init__(self, auth: Mapping[str, list[bytes]] | None = None) -> None:
        self._auth = auth or {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def auth_context(self) -> Mapping[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def test_requests_and_snapshot_changes_reach_the_stream_and_its_answers_reach_envoy() -> None:
    cache = SnapshotCache()
    registry = CollectorRegistry()
    proxies = ProxyRegistry()
    service = AdsService(cache, proxies, MetricsObserver(XdsMetrics(registry)))
    streams: list[FakeStream] = []

    def make(status: ProxyStatus) -> FakeStream:
        streams.append(FakeStream(status))
        return streams[-1]

    async def scenario() -> list[str]:
        go_on = asyncio.Event()

        async def requests() -> AsyncIterator[str]:
            yield "cds"
            await go_on.wait()
            yield "eds"

        out: list[str] = []
        async for resp in service.serve(requests(), make, FakeContext()):
            out.append(resp)
            if resp == "answer to cds":
                assert len(proxies) == 1
                assert registry.get_sample_value("xds_connected_proxies") == 1
                cache.set(snap(1000))  # a new snapshot while the stream is open
            if resp == "pushed":
                go_on.set()
        return out

    out = asyncio.run(scenario())
    assert out == ["answer to cds", "pushed", "answer to eds"]
    assert streams[0].seen == ["cds", "snapshot", "eds"]
    assert len(proxies) == 0, "a closed stream leaves the registry"
    assert registry.get_sample_value("xds_connected_proxies") == 0


def test_the_fleet_knows_the_newest_version_every_proxy_acked() -> None:
    cache = SnapshotCache()
    fleet = Fleet(
        cache, XdsMetrics(CollectorRegistry()), logging.getLogger("test"), False, bounds=Bounds(3)
    )
    first, second, third = snap(1000), snap(2000), snap(3000)
    for s in (first, second, third):
        cache.set(s)
    streams = itertools.count(1)
    connected: list[int] = []

    def proxies(*acked: Mapping[str, Collection[str]]) -> Fleet:
        """The fleet, with one connected proxy per mapping that ACKed those versions."""
        while connected:
            fleet.closed(StreamEvent(connected.pop(), "sotw"))
        for versions in acked:
            stream = next(streams)
            connected.append(stream)
            fleet.connected(
                StreamEvent(
                    stream, "sotw", f"edge-{stream}", user_agent="envoy", authenticated=True
                )
            )
            for type_url, vs in versions.items():
                for v in vs:
                    fleet.acked(Ack(stream, "edge", type_url, v))
        return fleet

    def acked(*snapshots: Snapshot) -> dict[str, frozenset[str]]:
        return {t: frozenset(s.versions[t] for s in snapshots) for t in third.versions}

    assert proxies(acked(third), acked(second, third)).last_acked_by_all() is third
    assert proxies(acked(third), acked(second)).last_acked_by_all() is None  # routes differ
    lagging = {t: v for t, v in acked(second).items() if not t.endswith("RouteConfiguration")}
    # A proxy that ACKed second's clusters but no routes yet fits second and third alike.
    assert proxies(lagging, acked(first, second)).last_acked_by_all() is second
    # A rejected version is never a target; nor one that `where` excludes.
    voter = proxies({typeurls.LISTENER: {first.versions[typeurls.LISTENER]}})
    nack = Nack("edge", CDS, third.versions[CDS], third.version, "rejected by Envoy")
    voter.nacked(dataclasses.replace(nack, stream_id=connected[0]))
    assert proxies(acked(second, third)).last_acked_by_all() is second
    assert proxies(acked(first, second)).last_acked_by_all(where=lambda s: s is not second) is first
    cache.set(snap(4000))
    cache.set(snap(5000))
    assert proxies(acked(second)).last_acked_by_all() is None, "only the last 3 are kept"


class RefusingContext(FakeContext):
    def __init__(self, auth: Mapping[str, list[bytes]] | None = None) -> None:
        super().__init__(auth)
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()


def test_a_stream_whose_first_request_names_no_node_is_refused_and_listed() -> None:
    cache = SnapshotCache()
    cache.set(snap(1000))
    registry = CollectorRegistry()
    proxies = ProxyRegistry()
    service = AdsService(cache, proxies, MetricsObserver(XdsMetrics(registry)))
    context = RefusingContext()

    class Anonymous(FakeStream):
        def on_request(self, req: str) -> Sequence[str]:
            return [f"answer to {req}"]

    async def requests() -> AsyncIterator[str]:
        yield "cds"

    async def scenario() -> list[str]:
        return [r async for r in service.serve(requests(), Anonymous, context, "delta")]

    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(scenario())
    assert context.aborted == [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "the first request of a stream must name its node (node.id)",
        )
    ]
    (refused,) = proxies.refusals()
    assert (refused.node_id, refused.reason) == ("", "no_node_id")
    assert registry.get_sample_value("xds_refused_streams_total", {"reason": "no_node_id"}) == 1
    assert len(proxies) == 0


def test_a_stream_that_refuses_a_request_is_ended_counted_and_listed() -> None:
    cache = SnapshotCache()
    registry = CollectorRegistry()
    proxies = ProxyRegistry()
    service = AdsService(cache, proxies, MetricsObserver(XdsMetrics(registry)))
    context = RefusingContext()

    class Greedy(FakeStream):
        def on_request(self, req: str) -> Sequence[str]:
            if req == "subscribe a million":
                raise Refused("too_many_names", "subscribed to 1000000 names")
            return super().on_request(req)

    async def requests() -> AsyncIterator[str]:
        yield "cds"
        yield "subscribe a million"

    async def scenario() -> list[str]:
        return [r async for r in service.serve(requests(), Greedy, context, "delta")]

    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(scenario())
    assert context.aborted == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "subscribed to 1000000 names")]
    (refused,) = proxies.refusals()
    assert (refused.node_id, refused.reason) == ("edge-1", "too_many_names")
    assert registry.get_sample_value("xds_refused_streams_total", {"reason": "too_many_names"}) == 1
