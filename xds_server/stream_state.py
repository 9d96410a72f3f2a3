"""What one ADS stream knows per resource type, whatever its protocol (State of the World or
Delta): the subscription, the nonce and version last sent, whether that response is still in
flight or was rejected, and the ordering rules that follow from them.

Rules kept here, for every protocol:
- a response answered with a nonce other than the last one sent for its type is stale;
- an answer is an ACK, or a NACK when it carries `error_detail`; both are recorded in the
  proxy's status and returned (`Ack`, `Nack`), and `ObservedStream` tells its observer;
- types are pushed in the order clusters → endpoints → listeners → routes, and listeners and
  routes wait while clusters or endpoints are in flight or NACKed, so a route never names a
  cluster Envoy is still warming or has rejected;
- endpoints are owed again after every cluster response: Envoy warms an updated cluster until
  it receives that cluster's endpoints, changed or not (go-control-plane #59, #526). The names
  of the clusters sent are owed (SotW sends every endpoint again; Delta those of the clusters);
- a NACK names the snapshot the rejected response came from, so the fleet can be rolled
  back (`fleet.Fleet`, an observer);
- after a NACK the stream puts back what Envoy had of that type (`restore`: Envoy applies
  the resources of a rejected response that pass one by one); the version rejected is
  `rejected` until another version of the type is sent: it is not sent again, and listeners
  and routes wait while clusters or endpoints are rejected, as while they are NACKed;
- while a NACK stands, a proxy's status keeps it (the ACK of what was put back does not clear
  it); when nothing could be put back the status says the proxy may run part of the rejected
  version (`partial`) until it ACKs a whole one.

`StreamState` records and decides; it counts, logs and reports nothing. `ObservedStream` is
what SotW and Delta streams share: their collaborators, and the observer told of each outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xds_server import typeurls
from xds_server.cache import SnapshotSource
from xds_server.observers import Ack, Nack, Sent, Unsupported, XdsObserver
from xds_server.proxies import ProxyStatus
from xds_server.restore import History, NoHistory
from xds_server.snapshot import Snapshot
from xds_server.wire import Wire

# A type waits while any of these is in flight or NACKed.
WAITS_FOR: dict[str, tuple[str, ...]] = {
    typeurls.CLUSTER: (),
    typeurls.ENDPOINT: (),
    typeurls.LISTENER: (typeurls.CLUSTER, typeurls.ENDPOINT),
    typeurls.ROUTE: (typeurls.CLUSTER, typeurls.ENDPOINT),
}


# What is kept of Envoy's message in a NACK, and of the node's id, cluster and user agent.
ERROR_CHARS = 16_384
NODE_CHARS = 1024

# A stream may subscribe to at most this many names of a type beyond twice the resources the
# type has: names that do not exist are remembered (Envoy asks for endpoints before they
# exist), so without a bound a client could grow the server's memory without end. The same
# bound holds for SotW and Delta subscriptions.
SPARE_NAMES = 1000


@dataclass
class TypeState:
    names: frozenset[str] | None = None  # the SotW subscription; None: wildcard
    sent_version: str | None = None
    sent_snapshot: str | None = None  # the snapshot version the last response came from
    sent_names: frozenset[str] | None = None
    nonce: str = ""
    in_flight: bool = False
    nacked: bool = False  # the last response was rejected and nothing since was accepted
    # The version of this type Envoy rejected, until another one is sent (a restore is not).
    rejected: str | None = None
    restoring: bool = False  # the last response sent puts back what Envoy had (`restore`)
    # resources to send even if unchanged (endpoints of the clusters just sent)
    owed: set[str] = field(default_factory=set)
    sent_at: float = 0.0  # monotonic time of the last response


class Refused(Exception):
    """The stream must end: the client went past a limit that protects the server. `reason`
    labels the refusal (metric, status); the message tells the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StreamState:
    def __init__(self, status: ProxyStatus) -> None:
        self.status = status
        self.types: dict[str, TypeState] = {}
        self._nonce = 0

    def of(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())

    def admit(self, req: Any) -> bool:
        """Note the node a request names (the first one that does, whatever the type it asks
        for); False when it asks for a type we do not serve (answered with nothing: the stream
        lives on). `req`: a SotW or Delta discovery request."""
        if req.HasField("node") and not self.status.node_id:
            node = req.node
            self.status.node_id = node.id[:NODE_CHARS]
            self.status.node_cluster = node.cluster[:NODE_CHARS]
            self.status.user_agent = node.user_agent_name[:NODE_CHARS]
        return req.type_url in WAITS_FOR

    def check_names(self, type_url: str, count: int, snapshot: Snapshot | None, spare: int) -> None:
        """Raise `Refused` when a subscription to `count` names of `type_url` is more than
        twice the type's resources in `snapshot` plus `spare`."""
        limit = 2 * len(snapshot.resources.get(type_url, {}) if snapshot else {}) + spare
        if count > limit:
            raise Refused(
                "too_many_names",
                f"subscribed to {count} names of {typeurls.SHORT_NAMES[type_url]}; "
                f"at most {limit} are served",
            )

    @staticmethod
    def error_of(req: Any) -> str | None:
        """Envoy's message when a request NACKs (its first `ERROR_CHARS` characters: it is
        kept per proxy and shown), else None."""
        if not req.HasField("error_detail"):
            return None
        message: str = req.error_detail.message
        return message if len(message) <= ERROR_CHARS else f"{message[:ERROR_CHARS]}..."

    def answer(
        self, type_url: str, nonce: str, version: str, error: str | None
    ) -> Ack | Nack | None:
        """Envoy answered a response of `type_url`: recorded, and returned as an ACK or (with
        `error`) a NACK; None (and nothing recorded) when the answer is stale."""
        state = self.of(type_url)
        if nonce != state.nonce:
            return None
        state.in_flight = False
        state.nacked = error is not None
        if error is not None and state.sent_snapshot:  # (a restore has none: see `sent`)
            state.rejected = state.sent_version
        st = self.status.of(type_url)
        seconds = time.monotonic() - state.sent_at
        if error is not None:
            st.nacked_version = st.sent_version
            st.error = error
            return Nack(
                self.status.node_id,
                type_url,
                state.sent_version or "",
                state.sent_snapshot or "",
                error,
                seconds,
                self.status.stream_id,
            )
        st.acked(version)
        st.partial = False
        if (
            st.nacked_version is not None
            and st.nacked_version != version
            and state.rejected is None  # not the ACK of what a restore put back
        ):
            st.nacked_version = None
            st.error = None
        return Ack(self.status.stream_id, self.status.node_id, type_url, version, seconds)

    def pushable(self, snapshot: Snapshot) -> Iterator[tuple[str, TypeState]]:
        """The subscribed types, in push order, that nothing they depend on holds back, when
        `snapshot` is served."""
        for type_url in typeurls.PUSH_ORDER:
            state = self.types.get(type_url)
            if state is not None and not any(self._holds(t, snapshot) for t in WAITS_FOR[type_url]):
                yield type_url, state

    def _holds(self, type_url: str, snapshot: Snapshot) -> bool:
        """In flight, NACKed, or rejected at the version `snapshot` has (a rollback or an edit
        that moves the type elsewhere frees what waits on it)."""
        state = self.types.get(type_url)
        return state is not None and (
            state.in_flight
            or state.nacked
            or (state.rejected is not None and snapshot.versions.get(type_url) == state.rejected)
        )

    def sent(
        self,
        type_url: str,
        version: str,
        snapshot_version: str,
        names: Iterable[str],
        restore: bool = False,
    ) -> str:
        """Record a response of `type_url` at `version`, from the snapshot `snapshot_version`,
        holding the resources `names`, for the current subscription; returns its nonce.
        `restore`: it puts back what Envoy had before a NACK (`rejected` stays; and
        `snapshot_version` is "": the fleet does not hold a NACK of it against a version)."""
        state = self.of(type_url)
        if not restore:
            state.rejected = None
        state.restoring = restore
        self._nonce += 1
        state.nonce = str(self._nonce)
        state.sent_version = version
        state.sent_snapshot = snapshot_version
        state.sent_names = state.names
        state.in_flight = True
        state.owed.clear()
        state.sent_at = time.monotonic()
        self.status.of(type_url).sent_version = version
        if type_url == typeurls.CLUSTER and typeurls.ENDPOINT in self.types:
            self.types[typeurls.ENDPOINT].owed.update(names)
        return state.nonce


class ObservedStream:
    """The part SotW and Delta streams share: the snapshot source, the stream's state, the
    observer told of what the state records, and the serializer they share with the other
    streams. A subclass implements `_sendable` (and `on_request`)."""

    def __init__(
        self,
        source: SnapshotSource,
        status: ProxyStatus,
        observer: XdsObserver,
        wire: Wire,
        history: History | None = None,
    ) -> None:
        """`history`: where what Envoy had before a NACK is found (`restore`)."""
        self._source = source
        self._state = StreamState(status)
        self._observer = observer
        self._wire = wire
        self._history: History = history if history is not None else NoHistory()

    @property
    def status(self) -> ProxyStatus:
        return self._state.status

    def on_snapshot(self) -> list[bytes]:
        return self._sendable()

    def _sendable(self) -> list[bytes]:
        raise NotImplementedError

    def _admit(self, req: Any) -> bool:
        if self._state.admit(req):
            return True
        self._observer.unsupported(Unsupported(self.status.node_id, req.type_url))
        return False

    def _answer(
        self, type_url: str, nonce: str, version: str, error: str | None
    ) -> Ack | Nack | None:
        """`StreamState.answer`, told to the observer; None when the answer is stale."""
        answer = self._state.answer(type_url, nonce, version, error)
        if isinstance(answer, Nack):
            self._observer.nacked(answer)
        elif answer is not None:
            self._observer.acked(answer)
        return answer

    def _sent(
        self,
        type_url: str,
        version: str,
        snapshot_version: str,
        names: Iterable[str],
        restore: bool = False,
    ) -> str:
        nonce = self._state.sent(type_url, version, snapshot_version, names, restore)
        self._observer.sent(Sent(self.status.node_id, type_url, version))
        return nonce

    def _reported(self, type_url: str, version: str) -> None:
        """A reconnecting Envoy says it runs `version` of `type_url`."""
        self.status.of(type_url).acked(version)
        self._observer.acked(
            Ack(self.status.stream_id, self.status.node_id, type_url, version, reported=True)
        )

    def _may_restore(self, type_url: str) -> bool:
        """Whether to put back what Envoy had after a NACK of `type_url`: not when what it
        NACKed was itself a restore (a client that rejects what it accepted before would
        otherwise be sent it again and again); its status then says what it may run."""
        if self._state.of(type_url).restoring:
            self._cannot_restore(type_url)
            return False
        return True

    def _cannot_restore(self, type_url: str) -> None:
        """Nothing could be put back after a NACK: the proxy may run part of what it
        rejected, and its status says so."""
        self.status.of(type_url).partial = True
