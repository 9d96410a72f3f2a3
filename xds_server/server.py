"""The ADS gRPC service: moves requests and snapshot changes into a `SotwStream`, and its
responses back to Envoy. Depends on the cache's `SnapshotSource` protocol only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_server.cache import SnapshotSource
from xds_server.metrics import XdsMetrics
from xds_server.snapshot import Snapshot
from xds_server.sotw import SotwStream
from xds_server.status import ProxyRegistry

_SNAPSHOT_CHANGED = object()
_CLOSED = object()


class AdsService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        source: SnapshotSource,
        registry: ProxyRegistry,
        metrics: XdsMetrics,
        log: logging.Logger,
    ) -> None:
        self._source = source
        self._registry = registry
        self._metrics = metrics
        self._log = log

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        status = self._registry.open()
        stream = SotwStream(self._source, status, self._metrics, self._log)
        events: asyncio.Queue[object] = asyncio.Queue()

        def on_snapshot(_: Snapshot) -> None:
            events.put_nowait(_SNAPSHOT_CHANGED)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    events.put_nowait(req)
            finally:
                events.put_nowait(_CLOSED)

        unsubscribe = self._source.subscribe(on_snapshot)
        reader = asyncio.create_task(read())
        self._metrics.connected_proxies.inc()
        try:
            while True:
                event = await events.get()
                if event is _CLOSED:
                    break
                if event is _SNAPSHOT_CHANGED:
                    responses = stream.on_snapshot()
                else:
                    assert isinstance(event, discovery_pb2.DiscoveryRequest)
                    first = not status.node_id
                    responses = stream.on_request(event)
                    if first and status.node_id:
                        self._registry.accepted(status.node_id)
                        self._log.info(
                            "proxy connected",
                            extra={"fields": {"node_id": status.node_id, "peer": context.peer()}},
                        )
                for resp in responses:
                    yield resp
        finally:
            reader.cancel()
            unsubscribe()
            self._registry.close(status)
            self._metrics.connected_proxies.dec()
            self._log.info("proxy disconnected", extra={"fields": {"node_id": status.node_id}})

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        node_id = ""
        with contextlib.suppress(TimeoutError, StopAsyncIteration, grpc.RpcError):
            first = await asyncio.wait_for(anext(aiter(request_iterator)), timeout=5)
            node_id = first.node.id
        await self._refuse(
            context,
            node_id,
            "delta_unsupported",
            "Delta xDS is not served; set ads_config.api_type to GRPC (State of the World)",
        )
        yield discovery_pb2.DeltaDiscoveryResponse()  # pragma: no cover (abort raises)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, node_id: str, reason: str, message: str
    ) -> None:
        """Refuse a stream so that the operator sees it: listed in status, counted, and logged
        (the first time per node and reason, then once a minute)."""
        now = time.time()
        refusal = self._registry.refuse(node_id, context.peer(), reason, now)
        self._metrics.refused_streams.labels(reason).inc()
        if refusal.count == 1 or now - refusal.logged_at >= 60:
            refusal.logged_at = now
            self._log.warning(
                "refused a proxy's stream",
                extra={
                    "fields": {
                        "node_id": node_id,
                        "peer": context.peer(),
                        "reason": reason,
                        "detail": message,
                        "refused_so_far": refusal.count,
                    }
                },
            )
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
