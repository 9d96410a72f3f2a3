"""State-of-the-World ADS: the decisions of one stream, free of gRPC.

`SotwStream.on_request` and `on_snapshot` return the responses to send, in order, serialized
(`wire`). Besides the rules every stream keeps (`stream_state`), SotW's own:
- a type is sent only when the snapshot's version for it, or the names subscribed, differ from
  what was last sent (or endpoints are owed after a cluster update), so an ACK or a NACK never
  triggers a resend: a NACKed version is not sent again; the next different one is;
- every response holds all the resources of its type that are subscribed: endpoints and routes
  by the names Envoy asks for; clusters and listeners are wildcard unless Envoy names them;
- a subscription may name at most twice its type's resources plus `spare_names` (a stream
  naming more is refused: `stream_state.Refused`), as in Delta;
- an answer with an error whose `version_info` is the version of the response it names is an
  ACK of that response: Envoy keeps an error until its next request goes out but moves the
  nonce on, so when two responses arrive before it answers, the error of the first comes with
  the nonce and accepted version of the second.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from xds_server import typeurls
from xds_server.cache import SnapshotSource
from xds_server.observers import Nack, XdsObserver
from xds_server.proxies import ProxyStatus
from xds_server.restore import History, sotw_body
from xds_server.stream_state import SPARE_NAMES, ObservedStream, TypeState
from xds_server.wire import Wire


def subscribed_names(type_url: str, names: list[str]) -> frozenset[str] | None:
    if type_url in typeurls.WILDCARD_TYPES and (not names or "*" in names):
        return None
    return frozenset(names)


class SotwStream(ObservedStream):
    """`ObservedStream(source, status, observer, wire, history)` speaking State of the
    World."""

    def __init__(
        self,
        source: SnapshotSource,
        status: ProxyStatus,
        observer: XdsObserver,
        wire: Wire,
        spare_names: int = SPARE_NAMES,
        history: History | None = None,
    ) -> None:
        super().__init__(source, status, observer, wire, history)
        self._spare = spare_names

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> list[bytes]:
        if not self._admit(req):
            return []
        type_url = req.type_url
        state = self._state.of(type_url)
        answer = None
        if not req.response_nonce and req.version_info and state.sent_version is None:
            self._reported(type_url, req.version_info)
        if req.response_nonce:
            error = self._state.error_of(req)
            if req.response_nonce == state.nonce and req.version_info == state.sent_version:
                error = None  # accepted; the error was about a response it replaced
            answer = self._answer(type_url, req.response_nonce, req.version_info, error)
            if answer is None:
                return []  # stale: answers a response that a newer one replaced
        # Counted before they are copied: a subscription past the bound costs nothing more.
        self._state.check_names(
            type_url, len(req.resource_names), self._source.current(), self._spare
        )
        names = subscribed_names(type_url, list(req.resource_names))
        if names != state.names:
            state.names = names  # a new object only when different: compared by identity below
        if isinstance(answer, Nack) and self._may_restore(type_url):
            return self._restore(type_url, state, req.version_info) + self._sendable()
        return self._sendable()

    def _restore(self, type_url: str, state: TypeState, kept: str) -> list[bytes]:
        """After a NACK: the response putting back the version `kept` of `type_url` (the one
        Envoy says it keeps), when the history has it."""
        snapshot = self._history.with_type_version(type_url, kept) if kept else None
        if snapshot is None:
            self._cannot_restore(type_url)
            return []
        body, names = sotw_body(snapshot, type_url, state.names)
        nonce = self._sent(type_url, kept, "", names, restore=True)
        return [self._wire.sotw(body, nonce)]

    def _sendable(self) -> list[bytes]:
        """Serialized DiscoveryResponses."""
        snapshot = self._source.current()
        if snapshot is None:
            return []
        out = []
        for type_url, state in self._state.pushable(snapshot):
            version = snapshot.versions[type_url]
            if state.sent_names is state.names and (
                version == state.rejected or (state.sent_version == version and not state.owed)
            ):
                continue
            body, names = self._wire.sotw_body(snapshot, type_url, state.names)
            nonce = self._sent(type_url, version, snapshot.version, names)
            out.append(self._wire.sotw(body, nonce))
        return out
