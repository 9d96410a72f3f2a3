"""The ADS gRPC service: moves Envoy's requests and snapshot changes into a stream object, and
the stream's responses back to Envoy. It depends on the cache's `SnapshotSource`, the `Stream`
protocol and an `observers.XdsObserver` only: State of the World (`sotw.SotwStream`) and Delta
(`delta.DeltaStream`) are the two stream kinds, served at once on the same port. What happens
on a stream (opened, connected, refused, pushed, closed) is told to the observer, which counts,
logs, traces and rolls the fleet back; the service itself does none of it.

A stream whose first request does not say which node it comes from (`node.id`) is refused:
the operator could not tell which proxy it is, and nothing it ACKs could be shown. So is one
whose stream object refuses it (`stream_state.Refused`: a client past a limit), and one past
the server's limits on streams (`StreamLimits`: RESOURCE_EXHAUSTED).

Identity. A stream over TLS with a verified client certificate is authenticated: its
identities are the certificate's subject alternative names (DNS, URI, IP, email: the values
gRPC's auth context lists under `x509_subject_alternative_name`), or its subject CN when it has
no SAN. Such a stream must name a node whose id is one of its identities, exactly; another
node id is refused with PERMISSION_DENIED (reason `node_not_in_certificate`): one proxy cannot
speak for another. The identities are kept in the proxy's status; the fleet lets only
authenticated streams veto a version (`fleet`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from xds_server import proxyless
from xds_server.cache import SnapshotSource
from xds_server.delta import DeltaStream
from xds_server.observers import Push, StreamEvent, StreamRefused, XdsObserver
from xds_server.proxies import ProxyRegistry, ProxyStatus
from xds_server.proxyless import is_proxyless_grpc
from xds_server.restore import History
from xds_server.snapshot import Snapshot
from xds_server.sotw import SotwStream
from xds_server.stream_state import SPARE_NAMES, Refused
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

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> None: ...


def identities(auth: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """The identities a verified client certificate proves: its SANs, else its subject CN;
    () when the stream is not authenticated by a certificate."""
    sans = tuple(v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", ()))
    if sans:
        return sans
    return tuple(v.decode(errors="replace") for v in auth.get("x509_common_name", ()))


@dataclass(frozen=True)
class StreamLimits:
    """How many ADS streams the server holds at once, in total and per client connection (a
    connection is a gRPC peer address); a stream past either is refused RESOURCE_EXHAUSTED."""

    total: int = 1000
    per_connection: int = 4


@dataclass(frozen=True)
class _SnapshotChanged:
    context: contextvars.Context  # where the change was made (the reload, and its span)


_CLOSED = object()


class AdsService:
    def __init__(
        self,
        source: SnapshotSource,
        registry: ProxyRegistry,
        observer: XdsObserver,
        limits: StreamLimits = StreamLimits(),
        spare_names: int = SPARE_NAMES,
        history: History | None = None,
    ) -> None:
        """`observer` is told of every stream's events (`observers`); `spare_names`: the
        names a subscription may hold beyond twice its type's resources; `history`: where a
        stream finds what a proxy had before a NACK, to put it back (`restore`)."""
        self._history = history
        self._source = source
        self._registry = registry
        self._observer = observer
        self._limits = limits
        self._spare = spare_names
        self._wire = Wire()  # responses serialized once, shared by the streams
        self._per_peer: dict[str, int] = {}

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
                self._source, status, self._observer, self._wire, self._spare, self._history
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
                self._source, status, self._observer, self._wire, self._spare, self._history
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
        peer = context.peer()
        if len(self._registry) >= self._limits.total:
            await self._refuse(
                context,
                "",
                "too_many_streams",
                "the server holds its maximum of streams",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            return
        if self._per_peer.get(peer, 0) >= self._limits.per_connection:
            await self._refuse(
                context,
                "",
                "too_many_streams_per_connection",
                f"at most {self._limits.per_connection} streams per connection",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            return
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        status = self._registry.open(protocol)
        status.peer = peer
        status.identities = identities(context.auth_context())
        stream: Stream[Q, R] | None = make(status)
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
                    assert stream is not None
                    responses = self._observer.push(push, stream.on_snapshot)
                else:
                    assert stream is not None
                    answered = await self._request(stream, cast(Q, event), protocol, context)
                    if answered is None:
                        return
                    responses = answered
                for resp in responses:
                    yield resp
        finally:
            reader.cancel()
            unsubscribe()
            stream = None  # its subscriptions go now, not when the generator is collected
            left = self._per_peer.pop(peer, 1) - 1
            if left:
                self._per_peer[peer] = left
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
        if first and status.identities and status.node_id not in status.identities:
            await self._refuse(
                context,
                status.node_id,
                "node_not_in_certificate",
                "the node id is not an identity of the client certificate",
                grpc.StatusCode.PERMISSION_DENIED,
            )
            return None
        if first and is_proxyless_grpc(status.user_agent):
            await self._refuse(
                context,
                status.node_id,
                proxyless.REASON,
                proxyless.REFUSAL,
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            return None
        if first:
            self._registry.accepted(status.node_id)
            self._observer.connected(
                StreamEvent(
                    status.stream_id,
                    protocol,
                    status.node_id,
                    status.peer,
                    user_agent=status.user_agent,
                    authenticated=bool(status.identities),
                )
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
