"""The ADS gRPC service: moves Envoy's requests and snapshot changes into a stream object, and
the stream's responses back to Envoy. It depends on the cache's `SnapshotSource`, the `Stream`
protocol and an `observers.XdsObserver` only: State of the World (`sotw.SotwStream`) and Delta
(`delta.DeltaStream`) are the two stream kinds, served at once on the same port. What happens
on a stream (opened, connected, refused, pushed, closed) is told to the observer, which counts,
logs, traces and rolls the fleet back; the service itself does none of it.

A stream whose first request does not say which node it comes from (`node.id`) is refused:
the operator could not tell which proxy it is, and nothing it ACKs could be shown. So is one
whose stream object refuses it (`stream_state.Refused`: a client past a limit).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import SnapshotSource
from xds_server.delta import DeltaStream
from xds_server.observers import Push, StreamEvent, StreamRefused, XdsObserver
from xds_server.proxies import ProxyRegistry, ProxyStatus
from xds_server.snapshot import Snapshot
from xds_server.sotw import SotwStream
from xds_server.stream_state import Refused
from xds_server.wire import Wire

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
    context: contextvars.Context  # where the change was made (the reload, and its span)


_CLOSED = object()


class AdsService:
    def __init__(
        self, source: SnapshotSource, registry: ProxyRegistry, observer: XdsObserver
    ) -> None:
        """`observer` is told of every stream's events (`observers`)."""
        self._source = source
        self._registry = registry
        self._observer = observer
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
            return SotwStream(self._source, status, self._observer, self._wire)

        async for resp in self.serve(request_iterator, make, context, "sotw"):
            yield resp

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        def make(status: ProxyStatus) -> DeltaStream:
            return DeltaStream(self._source, status, self._observer, self._wire)

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
            # Called inside the reload (and its span): its context goes with the push.
            events.put_nowait(_SnapshotChanged(contextvars.copy_context()))

        async def read() -> None:
            try:
                async for req in requests:
                    events.put_nowait(req)
            finally:
                events.put_nowait(_CLOSED)

        unsubscribe = self._source.subscribe(on_snapshot)
        reader = asyncio.create_task(read())
        self._observer.opened(StreamEvent(status.stream_id, protocol))
        try:
            while True:
                event = await events.get()
                if event is _CLOSED:
                    break
                if isinstance(event, _SnapshotChanged):
                    current = self._source.current()
                    push = Push(
                        status.node_id,
                        protocol,
                        current.version if current is not None else None,
                        event.context,
                    )
                    responses = self._observer.push(push, stream.on_snapshot)
                else:
                    answered = await self._request(stream, cast(Q, event), protocol, context)
                    if answered is None:
                        return
                    responses = answered
                for resp in responses:
                    yield resp
        finally:
            reader.cancel()
            unsubscribe()
            self._registry.close(status)
            self._observer.closed(StreamEvent(status.stream_id, protocol, status.node_id))

    async def _request(
        self, stream: Stream[Q, R], req: Q, protocol: str, context: Context
    ) -> Sequence[R] | None:
        """The stream's responses to `req`; None when the stream is refused (aborted): the
        stream refuses it, or the stream's first request names no node."""
        status = stream.status
        first = not status.node_id
        try:
            responses = stream.on_request(req)
        except Refused as refused:
            await self._refuse(
                context,
                status.node_id,
                refused.reason,
                str(refused),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            return None
        if first and not status.node_id:
            await self._refuse(
                context,
                "",
                "no_node_id",
                "the first request of a stream must name its node (node.id)",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            return None
        if first:
            self._registry.accepted(status.node_id)
            self._observer.connected(
                StreamEvent(status.stream_id, protocol, status.node_id, context.peer())
            )
        return responses

    async def _refuse(
        self, context: Context, node_id: str, reason: str, message: str, code: grpc.StatusCode
    ) -> None:
        """Refuse a stream so that the operator sees it: listed in status, and told to the
        observer (counted and logged)."""
        now = time.time()
        refusal = self._registry.refuse(node_id, context.peer(), reason, now)
        self._observer.refused(
            StreamRefused(node_id, context.peer(), reason, message, refusal.count, now)
        )
        await context.abort(code, message)
