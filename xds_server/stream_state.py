"""What one ADS stream knows per resource type, whatever its protocol (State of the World or
Delta): the subscription, the nonce and version last sent, whether that response is still in
flight or was rejected, and the ordering rules that follow from them.

Rules kept here, for every protocol:
- a response answered with a nonce other than the last one sent for its type is stale;
- an answer is an ACK, or a NACK when it carries `error_detail`; both are recorded in the
  proxy's status, counted, and NACKs logged with Envoy's message;
- types are pushed in the order clusters → endpoints → listeners → routes, and listeners and
  routes wait while clusters or endpoints are in flight or NACKed, so a route never names a
  cluster Envoy is still warming or has rejected;
- endpoints are owed again after every cluster response: Envoy warms an updated cluster until
  it receives that cluster's endpoints, changed or not (go-control-plane #59, #526).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from xds_server import typeurls
from xds_server.metrics import XdsMetrics
from xds_server.status import ProxyStatus

# A type waits while any of these is in flight or NACKed.
WAITS_FOR: dict[str, tuple[str, ...]] = {
    typeurls.CLUSTER: (),
    typeurls.ENDPOINT: (),
    typeurls.LISTENER: (typeurls.CLUSTER, typeurls.ENDPOINT),
    typeurls.ROUTE: (typeurls.CLUSTER, typeurls.ENDPOINT),
}


@dataclass
class TypeState:
    names: frozenset[str] | None = None  # the subscription; None: wildcard
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""
    in_flight: bool = False
    nacked: bool = False  # the last response was rejected and nothing since was accepted
    owed: bool = False  # send even if unchanged (endpoints after a cluster update)
    sent_at: float = 0.0  # monotonic time of the last response


class StreamState:
    def __init__(self, status: ProxyStatus, metrics: XdsMetrics, log: logging.Logger) -> None:
        self.status = status
        self._metrics = metrics
        self._log = log
        self.types: dict[str, TypeState] = {}
        self._nonce = 0

    def of(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())

    def note_node(self, node_id: str, node_cluster: str) -> None:
        if not self.status.node_id:
            self.status.node_id = node_id
            self.status.node_cluster = node_cluster

    def answer(self, type_url: str, nonce: str, version: str, error: str | None) -> bool:
        """Envoy answered a response of `type_url`; False (and nothing recorded) when the
        answer is stale."""
        state = self.of(type_url)
        if nonce != state.nonce:
            return False
        state.in_flight = False
        state.nacked = error is not None
        st = self.status.of(type_url)
        short = typeurls.SHORT_NAMES[type_url]
        self._metrics.push_ack_seconds.labels(short).observe(time.monotonic() - state.sent_at)
        if error is not None:
            st.nacked_version = st.sent_version
            st.error = error
            self._metrics.nacks.labels(short).inc()
            self._log.warning(
                "envoy rejected a config",
                extra={
                    "fields": {
                        "node_id": self.status.node_id,
                        "type": short,
                        "version": st.sent_version,
                        "error": error,
                    }
                },
            )
        else:
            st.acked_version = version
            if st.nacked_version is not None and st.nacked_version != version:
                st.nacked_version = None
                st.error = None
            self._metrics.acks.labels(short).inc()
        return True

    def pushable(self) -> Iterator[tuple[str, TypeState]]:
        """The subscribed types, in push order, that nothing they depend on holds back."""
        for type_url in typeurls.PUSH_ORDER:
            state = self.types.get(type_url)
            if state is not None and not any(self._holds(t) for t in WAITS_FOR[type_url]):
                yield type_url, state

    def _holds(self, type_url: str) -> bool:
        state = self.types.get(type_url)
        return state is not None and (state.in_flight or state.nacked)

    def sent(self, type_url: str, version: str) -> str:
        """Record a response of `type_url` at `version` for the current subscription; returns
        its nonce."""
        state = self.of(type_url)
        self._nonce += 1
        state.nonce = str(self._nonce)
        state.sent_version = version
        state.sent_names = state.names
        state.in_flight = True
        state.owed = False
        state.sent_at = time.monotonic()
        self.status.of(type_url).sent_version = version
        self._metrics.responses.labels(typeurls.SHORT_NAMES[type_url]).inc()
        if type_url == typeurls.CLUSTER and typeurls.ENDPOINT in self.types:
            self.types[typeurls.ENDPOINT].owed = True
        return state.nonce
