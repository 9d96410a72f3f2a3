"""State-of-the-World ADS: the decisions of one stream, free of gRPC.

`SotwStream.on_request` and `on_snapshot` return the responses to send, in order. Contract:
- a request whose `response_nonce` is not the last nonce sent for its type is stale: ignored;
- a request answering the last nonce is an ACK, or a NACK when it carries `error_detail`;
- a type is sent only when the snapshot's version for it, or the names subscribed, differ from
  what was last sent, so an ACK or a NACK never triggers a resend: a NACKed version is not
  sent again; the next different version is;
- endpoints are sent again right after every cluster response, changed or not: Envoy warms an
  updated cluster until it receives that cluster's endpoints (go-control-plane #59, #526);
- listeners and routes wait while clusters or endpoints are in flight (sent, not yet answered)
  or NACKed (until a later version is ACKed), so a route never names a cluster Envoy is still
  warming or has rejected;
- endpoints and routes are sent by the names subscribed; clusters and listeners are wildcard
  unless Envoy names them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from xds_server import typeurls
from xds_server.cache import SnapshotSource
from xds_server.metrics import XdsMetrics
from xds_server.snapshot import Resource
from xds_server.status import ProxyStatus

# A type waits while any of these is in flight.
WAITS_FOR: dict[str, tuple[str, ...]] = {
    typeurls.CLUSTER: (),
    typeurls.ENDPOINT: (),
    typeurls.LISTENER: (typeurls.CLUSTER, typeurls.ENDPOINT),
    typeurls.ROUTE: (typeurls.CLUSTER, typeurls.ENDPOINT),
}


@dataclass
class _TypeState:
    names: frozenset[str] | None = None  # None: wildcard
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""
    in_flight: bool = False
    nacked: bool = False  # the last response was rejected and nothing since was accepted
    owed: bool = False  # send even if unchanged (endpoints after a cluster update)


def subscribed_names(type_url: str, names: list[str]) -> frozenset[str] | None:
    if type_url in typeurls.WILDCARD_TYPES and (not names or "*" in names):
        return None
    return frozenset(names)


class SotwStream:
    def __init__(
        self,
        source: SnapshotSource,
        status: ProxyStatus,
        metrics: XdsMetrics,
        log: logging.Logger,
    ) -> None:
        self._source = source
        self._status = status
        self._metrics = metrics
        self._log = log
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0

    def on_request(
        self, req: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        type_url = req.type_url
        if type_url not in WAITS_FOR:
            self._log.warning(
                "unsupported resource type requested",
                extra={"fields": {"node_id": self._status.node_id, "type_url": type_url}},
            )
            return []
        if req.HasField("node") and not self._status.node_id:
            self._status.node_id = req.node.id
            self._status.node_cluster = req.node.cluster
        state = self._types.setdefault(type_url, _TypeState())
        if req.response_nonce:
            if req.response_nonce != state.nonce:
                return []  # stale: answers a response that a newer one replaced
            state.in_flight = False
            state.nacked = req.HasField("error_detail")
            self._record_answer(type_url, req)
        state.names = subscribed_names(type_url, list(req.resource_names))
        return self._sendable()

    def on_snapshot(self) -> list[discovery_pb2.DiscoveryResponse]:
        return self._sendable()

    def _record_answer(self, type_url: str, req: discovery_pb2.DiscoveryRequest) -> None:
        st = self._status.of(type_url)
        short = typeurls.SHORT_NAMES[type_url]
        if req.HasField("error_detail"):
            st.nacked_version = st.sent_version
            st.error = req.error_detail.message
            self._metrics.nacks.labels(short).inc()
            self._log.warning(
                "envoy rejected a config",
                extra={
                    "fields": {
                        "node_id": self._status.node_id,
                        "type": short,
                        "version": st.sent_version,
                        "error": req.error_detail.message,
                    }
                },
            )
        else:
            st.acked_version = req.version_info
            if st.nacked_version is not None and st.nacked_version != req.version_info:
                st.nacked_version = None
                st.error = None
            self._metrics.acks.labels(short).inc()

    def _sendable(self) -> list[discovery_pb2.DiscoveryResponse]:
        snapshot = self._source.current()
        if snapshot is None:
            return []
        out = []
        for type_url in typeurls.PUSH_ORDER:
            state = self._types.get(type_url)
            if state is None:
                continue
            version = snapshot.versions[type_url]
            if state.sent_version == version and state.sent_names == state.names and not state.owed:
                continue
            if any(self._blocks(t) for t in WAITS_FOR[type_url]):
                continue
            out.append(
                self._response(type_url, state, version, snapshot.pick(type_url, state.names))
            )
            if type_url == typeurls.CLUSTER and typeurls.ENDPOINT in self._types:
                self._types[typeurls.ENDPOINT].owed = True
        return out

    def _blocks(self, type_url: str) -> bool:
        state = self._types.get(type_url)
        return state is not None and (state.in_flight or state.nacked)

    def _response(
        self, type_url: str, state: _TypeState, version: str, resources: list[Resource]
    ) -> discovery_pb2.DiscoveryResponse:
        self._nonce += 1
        state.nonce = str(self._nonce)
        state.sent_version = version
        state.sent_names = state.names
        state.in_flight = True
        state.owed = False
        self._status.of(type_url).sent_version = version
        self._metrics.responses.labels(typeurls.SHORT_NAMES[type_url]).inc()
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[r.packed for r in resources],
        )
