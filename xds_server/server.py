"""The ADS gRPC service: moves Envoy's requests and snapshot changes into a stream object, and
the stream's responses back to Envoy. It depends on the cache's `SnapshotSource` and on the
`Stream` protocol only: State of the World (`sotw.SotwStream`) and Delta (`delta.DeltaStream`)
are the two stream kinds, served at once on the same port.

A stream whose first request does not say which node it comes from (`node.id`) is refused:
the operator could not tell which proxy it is, and nothing it ACKs could be shown. So is one
whose stream object refuses it (`stream_state.Refused`: a client past a limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from opentelemetry import context as otel_context

from xds_server.cache import SnapshotSource
from xds_server.delta import DeltaStream
from xds_server.metrics import XdsMetrics
from xds_server.proxies import ProxyRegistry, ProxyStatus
from xds_server.snapshot import Snapshot
from xds_server.sotw import SotwStream
from xds_server.stream_state import OnNack, Refused
from xds_server.wire import Wire

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

Q = TypeVar("Q")  # a request of the stream's protocol
R = TypeVar("R")  # a response
Q_contra = TypeVar("Q_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class Stream(Protocol[Q_contra, R_co]):
    """The decisions of one ADS stream: what to send after each request or snapshot change.
    `on_request` raises `stream_state.Refused` to end the stream."""

    @property
    def status(self) -> ProxyStatus: ...

    def on_request(self, req: Q_contra) -> Sequence[R_co]: ...

    def on_snapshot(self) -> Sequence[R_co]: ...


class Context(Protocol):
    """The part of `grpc.aio.ServicerContext` the service uses (tests pass a fake)."""

    def peer(self) -> str: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> None: ...


@dataclass(frozen=True)
class _SnapshotChanged:
    context: Any  # the OpenTelemetry context of the reload that made it (None: not traced)


_CLOSED = object()


class AdsService:
    def __init__(
        self,
        source: SnapshotSource,
        registry: ProxyRegistry,
        metrics: XdsMetrics,
        log: logging.Logger,
        on_nack: OnNack | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`tracer`: a span per push of a new snapshot to a proxy ("xds push"), the child of
        the reload that made the snapshot."""
        self._tracer = tracer
        self._source = source
        self._registry = registry
        self._metrics = metrics
        self._log = log
        self._on_nack = on_nack
        self._wire = Wire()  # responses serialized once, shared by the streams

    def handler(self) -> grpc.GenericRpcHandler:
        """The service for a gRPC server. Streams answer with serialized responses (`wire`),
        so responses are sent as they are; requests are parsed as usual."""
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.StreamAggregatedResources,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.DeltaAggregatedResources,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                ),
            },
        )

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        def make(status: ProxyStatus) -> SotwStream:
            return SotwStream(
                self._source, status, self._metrics, self._log, self._on_nack, self._wire
            )

        async for resp in self.serve(request_iterator, make, context, "sotw"):
            yield resp

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        def make(status: ProxyStatus) -> DeltaStream:
            return DeltaStream(
                self._source, status, self._metrics, self._log, self._on_nack, self._wire
            )

        async for resp in self.serve(request_iterator, make, context, "delta"):
            yield resp

    async def serve(
        self,
        requests: AsyncIterator[Q],
        make: Callable[[ProxyStatus], Stream[Q, R]],
        context: Context,
        protocol: str = "sotw",
    ) -> AsyncIterator[R]:
        """Run one stream until Envoy closes it: each request and each new snapshot goes to the
        stream, in arrival order, and its responses to Envoy."""
        status = self._registry.open(protocol)
        stream = make(status)
        events: asyncio.Queue[object] = asyncio.Queue()

        def on_snapshot(_: Snapshot) -> None:
            # Called inside the reload (and its span): remember it for the push's span.
            events.put_nowait(
                _SnapshotChanged(otel_context.get_current() if self._tracer else None)
            )

        async def read() -> None:
            try:
                async for req in requests:
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
                if isinstance(event, _SnapshotChanged):
                    responses = self._push(stream, status, protocol, event)
                else:
                    first = not status.node_id
                    try:
                        responses = stream.on_request(cast(Q, event))
                    except Refused as refused:
                        await self._refuse(
                            context,
                            status.node_id,
                            refused.reason,
                            str(refused),
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                        )
                        return
                    if first and not status.node_id:
                        await self._refuse(
                            context,
                            "",
                            "no_node_id",
                            "the first request of a stream must name its node (node.id)",
                            grpc.StatusCode.INVALID_ARGUMENT,
                        )
                        return
                    if first:
                        self._registry.accepted(status.node_id)
                        self._log.info(
                            "proxy connected",
                            extra={
                                "fields": {
                                    "node_id": status.node_id,
                                    "peer": context.peer(),
                                    "protocol": protocol,
                                }
                            },
                        )
                for resp in responses:
                    yield resp
        finally:
            reader.cancel()
            unsubscribe()
            self._registry.close(status)
            self._metrics.connected_proxies.dec()
            if status.node_id:
                self._log.info("proxy disconnected", extra={"fields": {"node_id": status.node_id}})

    def _push(
        self,
        stream: Stream[Q, R],
        status: ProxyStatus,
        protocol: str,
        event: _SnapshotChanged,
    ) -> Sequence[R]:
        if self._tracer is None:
            return stream.on_snapshot()
        with self._tracer.start_as_current_span("xds push", context=event.context) as span:
            responses = stream.on_snapshot()
            span.set_attribute("sidecar.node_id", status.node_id)
            span.set_attribute("sidecar.xds_protocol", protocol)
            span.set_attribute("sidecar.responses", len(responses))
            current = self._source.current()
            if current is not None:
                span.set_attribute("sidecar.snapshot.version", current.version)
        return responses

    async def _refuse(
        self, context: Context, node_id: str, reason: str, message: str, code: grpc.StatusCode
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
        await context.abort(code, message)
