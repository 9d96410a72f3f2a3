"""Delta (incremental) ADS: the decisions of one stream, free of gRPC.

`DeltaStream.on_request` and `on_snapshot` return the responses to send, in order, serialized
(`wire`). Besides the rules every stream keeps (`stream_state`: stale nonces, push order,
listeners and routes held while clusters or endpoints are in flight or NACKed, endpoints owed
after clusters), Delta's own, as Envoy and go-control-plane implement the xDS protocol:

- Subscriptions, per type. The first request of a type that subscribes to no name is a
  wildcard subscription ("legacy wildcard"), and so is a subscription to `*`; wildcard lasts
  until `*` is unsubscribed, whatever names are subscribed besides. Names are subscribed and
  unsubscribed by every request, ACKs included, even one whose nonce is stale.
- What the client has: per resource, the version we last sent it; on a re-connect, the
  versions it reports in `initial_resource_versions`. Versions are content hashes, the same on
  every replica and across restarts, so a re-connected Envoy is sent nothing it already has.
- A response holds the subscribed resources whose version differs from what the client has,
  and in `removed_resources` the names it has that are gone. A name subscribed explicitly that
  does not exist is answered in `removed_resources` too (that is how Delta says "does not
  exist"). A name unsubscribed while wildcard is sent again or removed: Envoy keeps it until
  told which.
- `system_version_info` is the snapshot's version of the type, and an ACK records it, as in
  SotW. A type is answered when something differs for this client or that version moved, and
  the first answer to a wildcard subscription is sent even when empty, so that Envoy finishes
  initializing.
- Endpoints owed after a cluster response are the endpoints of the clusters in it, sent again
  even when unchanged (Envoy warms an updated cluster until they arrive).
- After a NACK, what Envoy had before the rejected response is put back at once (`restore`):
  each resource of it at the version Envoy had (found in the history), and the ones it did not
  have removed; what cannot be found is marked unknown and the status says the proxy may run
  part of the rejected version (so does a first response of a type, as in SotW: nothing is
  put back then). What Envoy rejected is not sent again until the type changes
  or the subscription does (no loop); then it is offered again with the change, so that the
  status shows a config that Envoy still rejects instead of claiming SYNCED.
- A stream that subscribes to more names of a type than twice its resources plus
  `spare_names` (`SPARE_NAMES` unless told) is refused (`stream_state.Refused`): the names it
  subscribes to are kept, existing or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import SnapshotSource
from xds_server.observers import Nack, XdsObserver
from xds_server.proxies import ProxyStatus
from xds_server.restore import History, delta_response
from xds_server.snapshot import Resource, Snapshot
from xds_server.stream_state import SPARE_NAMES, ObservedStream, TypeState
from xds_server.wire import Wire

WILDCARD = "*"
# A version no resource has: the client must be told (sent the resource, or its removal).
UNKNOWN = ""


@dataclass
class Subscription:
    """One type's subscription on a Delta stream, and what the client has of it."""

    wildcard: bool
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name → the version the client has
    changed: bool = False  # subscribed or unsubscribed since the last response
    last_sent: dict[str, str] = field(default_factory=dict)  # the last response's resources
    # What the client had, before the last response, of each name it updated or removed
    # (None: it did not have it): what a NACK puts back.
    before: dict[str, str | None] = field(default_factory=dict)
    # The snapshot `known` matches (for the names subscribed) since the last response; None
    # when it may not (a NACK or a subscription changed it). The next diff starts from it.
    base: Snapshot | None = None

    def subscribe(self, names: Iterable[str]) -> None:
        for name in names:
            self.changed = True
            if name == WILDCARD:
                self.wildcard = True
                continue
            self.names.add(name)
            self.known.setdefault(name, UNKNOWN)

    def unsubscribe(self, names: Iterable[str]) -> None:
        for name in names:
            self.changed = True
            if name == WILDCARD:
                self.wildcard = False
                for gone in [n for n in self.known if n not in self.names]:
                    del self.known[gone]
                continue
            self.names.discard(name)
            if self.wildcard:
                if name in self.known:
                    self.known[name] = UNKNOWN  # still ours through wildcard, or gone: say which
            else:
                self.known.pop(name, None)

    def diff(
        self, resources: Mapping[str, Resource], owed: set[str]
    ) -> tuple[list[Resource], list[str]]:
        """What to send so that the client has exactly the resources it subscribes to: the
        updates (by name) and the names to remove (sorted)."""
        # The snapshot's mapping is sorted by name; under wildcard it holds every name wanted.
        wanted: Iterable[str] = resources if self.wildcard else sorted(self.names)
        known = self.known
        updates = [
            r
            for name in wanted
            if (r := resources.get(name)) is not None
            and (known.get(name) != r.version or name in owed)
        ]
        removed = sorted(n for n in known if n not in resources)
        return updates, removed

    def diff_since(
        self, base: Snapshot, snapshot: Snapshot, type_url: str, owed: set[str]
    ) -> tuple[list[Resource], list[str]]:
        """`diff`, when `known` is `base`'s: only what changed between the two is looked at."""
        resources = snapshot.resources.get(type_url, {})
        changed, gone = snapshot.changes_since(base, type_url)
        known = self.known
        wanted = [n for n in changed if self.wildcard or n in self.names]
        wanted.extend(n for n in owed if n in resources and (self.wildcard or n in self.names))
        updates = [
            r
            for name in sorted(set(wanted))
            if known.get(name) != (r := resources[name]).version or name in owed
        ]
        return updates, [n for n in gone if n in known]


class DeltaStream(ObservedStream):
    """`ObservedStream(source, status, observer, wire, history)` speaking Delta."""

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
        self._subs: dict[str, Subscription] = {}

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[bytes]:
        if not self._admit(req):
            return []
        type_url = req.type_url
        state = self._state.of(type_url)
        sub = self._subs.get(type_url)
        if sub is None:
            sub = Subscription(
                wildcard=not req.resource_names_subscribe,
                known=dict(req.initial_resource_versions),
            )
            self._subs[type_url] = sub
        restored: list[bytes] = []
        if req.response_nonce:
            error = self._state.error_of(req)
            answer = self._answer(type_url, req.response_nonce, state.sent_version or "", error)
            if isinstance(answer, Nack) and self._may_restore(type_url):
                restored = self._restore(type_url, sub)
        sub.subscribe(req.resource_names_subscribe)
        sub.unsubscribe(req.resource_names_unsubscribe)
        snapshot = self._source.current()
        self._state.check_names(type_url, len(sub.names), snapshot, self._spare)
        return restored + self._sendable()

    def _restore(self, type_url: str, sub: Subscription) -> list[bytes]:
        """After a NACK: the response putting back what the client had before the rejected
        one (`sub.before`), as far as the history has it; what it does not is marked unknown,
        to be offered again with the next change."""
        updates: list[Resource] = []
        removed: list[str] = []
        lost = False
        had_any = any(sub.before.values()) or any(
            v for n, v in sub.known.items() if n not in sub.before
        )
        if self.status.of(type_url).acked_version is None and not had_any:
            # It had nothing of this type (its first response, as SotW's with no version): a
            # proxy with part of its first config is not made one with none.
            for name in sub.before:
                sub.known[name] = UNKNOWN
            sub.before = {}
            sub.base = None
            self._cannot_restore(type_url)
            return []
        for name, had in sorted(sub.before.items()):
            found = None
            if had is not None and had != UNKNOWN:
                found = self._history.resource(type_url, name, had)
            if had is None:
                if sub.known.pop(name, None) is not None:
                    removed.append(name)
            elif found is not None:
                updates.append(found)
                sub.known[name] = had
            else:
                lost = True
                sub.known[name] = UNKNOWN
        sub.base = None
        sub.before = {}
        if lost:
            self._cannot_restore(type_url)
        if not updates and not removed:
            return []
        version = self.status.of(type_url).acked_version or ""
        nonce = self._sent(type_url, version, "", [r.name for r in updates], restore=True)
        sub.last_sent = {r.name: r.version for r in updates}
        return [delta_response(type_url, version, nonce, updates, removed)]

    def _sendable(self) -> list[bytes]:
        """Serialized DeltaDiscoveryResponses."""
        snapshot = self._source.current()
        if snapshot is None:
            return []
        out = []
        for type_url, state in self._state.pushable(snapshot):
            resp = self._response(snapshot, type_url, state, self._subs[type_url])
            if resp is not None:
                out.append(resp)
        return out

    def _response(
        self, snapshot: Snapshot, type_url: str, state: TypeState, sub: Subscription
    ) -> bytes | None:
        version = snapshot.versions[type_url]
        if not sub.changed and (
            version == state.rejected
            or (state.sent_version == version and (state.nacked or not state.owed))
        ):
            # Nothing moved for this client (an ACK, another type's change); and what Envoy
            # rejected stays unsent until something changes.
            return None
        if sub.base is not None and not sub.changed:
            updates, removed = sub.diff_since(sub.base, snapshot, type_url, state.owed)
        else:
            updates, removed = sub.diff(snapshot.resources.get(type_url, {}), state.owed)
        sub.base = snapshot
        if not updates and not removed and state.sent_version == version:
            state.owed.clear()
            sub.changed = False
            return None
        sub.before = {r.name: sub.known.get(r.name) for r in updates}
        sub.before.update((name, sub.known.get(name)) for name in removed)
        for r in updates:
            sub.known[r.name] = r.version
        for name in removed:
            del sub.known[name]
        sub.last_sent = {r.name: r.version for r in updates}
        sub.changed = False
        nonce = self._sent(type_url, version, snapshot.version, sub.last_sent)
        return self._wire.delta(snapshot, type_url, nonce, updates, removed)
