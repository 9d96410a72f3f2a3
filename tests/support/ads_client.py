"""A small ADS client that behaves like Envoy on one stream, State of the World or Delta: it
subscribes to every cluster and listener (wildcard), then to the endpoints of the EDS clusters
and the routes its listeners name, ACKs every response (or NACKs the ones `reject` picks), and
records per type the versions it accepted and when. Tests and `bench/xds_scale.py` use it as
a fleet of simulated proxies: many of them run on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from xds_server import typeurls

CDS, EDS, LDS, RDS = typeurls.CLUSTER, typeurls.ENDPOINT, typeurls.LISTENER, typeurls.ROUTE
PROTOCOLS = ("sotw", "delta")

# A response's type and the resources the client would hold with it (all of them, in Delta
# too) → an error message to NACK it with, or None to ACK it.
Reject = Callable[[str, Mapping[str, bytes]], str | None]


def _accept_all(type_url: str, resources: Mapping[str, bytes]) -> str | None:
    return None


@dataclass
class TypeSeen:
    """What the client holds of one type, and when it ACKed each version."""

    resources: dict[str, bytes] = field(default_factory=dict)  # name → serialized resource
    versions: dict[str, str] = field(default_factory=dict)  # name → version (Delta)
    version: str = ""  # the last version ACKed
    acked_at: dict[str, float] = field(default_factory=dict)  # version → time.monotonic()
    nacked: list[str] = field(default_factory=list)  # errors sent


def _eds_name(raw: bytes) -> str | None:
    c = cluster_pb2.Cluster.FromString(raw)
    if c.type != cluster_pb2.Cluster.EDS:
        return None
    name: str = c.eds_cluster_config.service_name or c.name
    return name


def _route_names(raw: bytes) -> list[str]:
    names = []
    for chain in listener_pb2.Listener.FromString(raw).filter_chains:
        for f in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                names.append(manager.rds.route_config_name)
    return names


class AdsClient:
    def __init__(
        self,
        target: str,
        node_id: str | None,
        protocol: str = "sotw",
        reject: Reject = _accept_all,
        initial: Mapping[str, Mapping[str, str]] | None = None,
        user_agent: str = "envoy",
    ) -> None:
        """`node_id` None sends no node at all; `initial` gives Delta's
        `initial_resource_versions` per type (a client that re-connects); `user_agent` is the
        node's `user_agent_name` (the client plays an Envoy unless told)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.target = target
        self.node_id = node_id
        self.protocol = protocol
        self.reject = reject
        self.initial = {t: dict(v) for t, v in (initial or {}).items()}
        self.user_agent = user_agent
        self.seen: dict[str, TypeSeen] = {t: TypeSeen() for t in typeurls.PUSH_ORDER}
        self.changed = asyncio.Event()  # set after every response handled
        self.responses = 0
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._node_sent = False
        self._eds_by_cluster: dict[str, str | None] = {}
        self._eds_wanted: set[str] = set()
        self._rds_wanted: set[str] = set()
        self._asked: set[str] = set()  # types whose first request went out
        self._nonces: dict[str, str] = {}  # SotW: the last nonce per type

    async def run(self) -> None:
        """Stream until cancelled; raises `grpc.aio.AioRpcError` when the server ends it."""
        options = [("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(self.target, options=options) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            self._ask(CDS, ())
            self._ask(LDS, ())
            if self.protocol == "delta":
                call = stub.DeltaAggregatedResources(self._requests())
                async for resp in call:
                    self._on_delta(resp)
            else:
                call = stub.StreamAggregatedResources(self._requests())
                async for resp in call:
                    self._on_sotw(resp)

    def has(self, versions: Mapping[str, str]) -> bool:
        """Whether the client has ACKed each `type_url → version` given."""
        return all(self.seen[t].version == v for t, v in versions.items())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            yield await self._outbox.get()

    def _node(self, req: Any) -> None:
        if not self._node_sent and self.node_id is not None:
            req.node.CopyFrom(
                base_pb2.Node(id=self.node_id, cluster="simulated", user_agent_name=self.user_agent)
            )
        self._node_sent = True

    def _ask(self, type_url: str, names: Iterable[str]) -> None:
        """The first request of a type."""
        self._asked.add(type_url)
        if self.protocol == "delta":
            req: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=sorted(names),
                initial_resource_versions=self.initial.get(type_url, {}),
            )
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=sorted(names))
        self._node(req)
        self._outbox.put_nowait(req)

    def _answer(
        self, seen: TypeSeen, resp: Any, version: str, resources: Mapping[str, bytes]
    ) -> str | None:
        """ACK (record `version`) or NACK a response that gives the client `resources`."""
        error = self.reject(resp.type_url, resources)
        if error is None:
            seen.version = version
            seen.acked_at.setdefault(version, time.monotonic())
        else:
            seen.nacked.append(error)
        return error

    def _follow(self, type_url: str, resources: Mapping[str, bytes]) -> None:
        """Subscribe to what clusters and listeners name (as Envoy does)."""
        if type_url == CDS:
            by_cluster = self._eds_by_cluster
            for name in [n for n in by_cluster if n not in resources]:
                del by_cluster[name]
            for name, raw in resources.items():
                if name not in by_cluster or self.seen[CDS].resources.get(name) is not raw:
                    by_cluster[name] = _eds_name(raw)
            wanted = {n for n in by_cluster.values() if n is not None}
            self._resubscribe(EDS, self._eds_wanted, wanted)
            self._eds_wanted = wanted
        elif type_url == LDS:
            wanted = {n for raw in resources.values() for n in _route_names(raw)}
            self._resubscribe(RDS, self._rds_wanted, wanted)
            self._rds_wanted = wanted

    def _resubscribe(self, type_url: str, old: set[str], new: set[str]) -> None:
        if type_url not in self._asked:
            if new:
                self._ask(type_url, new)
            return
        if old == new:
            return
        if self.protocol == "delta":
            self._outbox.put_nowait(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url,
                    resource_names_subscribe=sorted(new - old),
                    resource_names_unsubscribe=sorted(old - new),
                )
            )
            return
        self._outbox.put_nowait(
            discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                resource_names=sorted(new),
                version_info=self.seen[type_url].version,
                response_nonce=self._nonces.get(type_url, ""),
            )
        )

    def _on_sotw(self, resp: discovery_pb2.DiscoveryResponse) -> None:
        seen = self.seen[resp.type_url]
        resources: dict[str, bytes] = {}
        for any_ in resp.resources:
            raw: bytes = any_.value
            name = _name_of(resp.type_url, raw)
            old = seen.resources.get(name)
            resources[name] = old if old is not None and old == raw else raw
        self._follow(resp.type_url, resources)
        seen.resources = resources
        self._nonces[resp.type_url] = resp.nonce
        error = self._answer(seen, resp, resp.version_info, resources)
        names = {CDS: (), LDS: (), EDS: self._eds_wanted, RDS: self._rds_wanted}[resp.type_url]
        ack = discovery_pb2.DiscoveryRequest(
            type_url=resp.type_url,
            version_info=seen.version,
            response_nonce=resp.nonce,
            resource_names=sorted(names),
        )
        if error is not None:
            ack.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._outbox.put_nowait(ack)
        self._handled()

    def _on_delta(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> None:
        seen = self.seen[resp.type_url]
        resources = dict(seen.resources)
        for r in resp.resources:
            resources[r.name] = r.resource.value
            seen.versions[r.name] = r.version
        for name in resp.removed_resources:
            resources.pop(name, None)
            seen.versions.pop(name, None)
        error = self._answer(seen, resp, resp.system_version_info, resources)
        if error is None:
            self._follow(resp.type_url, resources)
            seen.resources = resources
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        if error is not None:
            ack.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._outbox.put_nowait(ack)
        self._handled()

    def _handled(self) -> None:
        self.responses += 1
        self.changed.set()
        self.changed = asyncio.Event()


def _name_of(type_url: str, raw: bytes) -> str:
    """A SotW resource's name (Delta responses carry it beside the resource). It is field 1
    of every type we serve, serialized first: read it without parsing the rest (a route
    configuration can be megabytes)."""
    if raw[:1] == b"\x0a":
        size, at = 0, 1
        for shift in range(0, 35, 7):
            byte = raw[at]
            at += 1
            size |= (byte & 0x7F) << shift
            if byte < 0x80:
                return raw[at : at + size].decode()
    message = typeurls.MESSAGES[type_url].FromString(raw)
    name: str = message.cluster_name if type_url == EDS else message.name
    return name
