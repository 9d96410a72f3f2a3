"""What happens when Envoy rejects a config: the fleet never stays split, and only the operator's
own save changes what it is served.

Who may veto a version. A NACK marks a version rejected and rolls the fleet back only when it
comes from a stream that may vote, one that is all of:
- authenticated: its client certificate names its node (`server`); without mTLS no stream is,
  and NACKs veto nothing unless the operator opts in (`unauthenticated_veto`,
  `--xds-unauthenticated-veto`) for a network where only our Envoys can reach the port;
- an Envoy: its node's `user_agent_name` is "envoy" (a proxyless gRPC client that cannot use
  our filters would reject what every Envoy accepts: the server refuses its stream,
  `xds_server.proxyless`, and it vetoes nothing);
- proven: it has ACKed at least one response of ours on this stream;
- the first of its node: of the streams that name the same node id, the one connected
  earliest and still open votes; the others are duplicates, served alike and listed in the
  status with their peer addresses, and their NACKs veto nothing. (One Envoy holds one ADS
  stream; a second stream with its id is another process, or the same Envoy reconnecting
  before its old stream timed out, which gains its vote when the old one closes.)
Any other NACK is shown on its proxy (status, log, metric) and changes nothing for the fleet.
Only the streams that may vote constrain the rollback targets below.

A rollback never grants what the version rolled back from refuses (`grants.grants_more`): a
version that revokes access is undone by nothing but the operator's own save. When the only
target would grant more, the fleet holds where it is.

When a proxy that may vote NACKs a response:
- if another proxy has ACKed that very content, the fault is the proxy's (its listener port is
  taken, say), not the version's: the NACK shows on that proxy (status, log, metric) and the
  fleet goes on;
- otherwise the snapshot the response came from is marked rejected, and so is the snapshot
  served now if it holds the same rejected content (a later edit that kept it); a rejected
  version is never served again (the reloader refuses it, saying why), so the fleet does not
  churn on it;
- Envoy's message is logged and counted by the other observers (`xds_nacks_total`), shown per
  proxy in the status, and here listed under the rejected versions, and the reload that
  produced the version served now is reported "rejected by Envoy";
- with rollback on (the default), when the version served now is rejected, every proxy is moved
  back to the newest kept version that every connected proxy that may vote has ACKed, that was
  not rejected, whose version of the rejected type differs from the one rejected (otherwise
  rolling back would send again what was rejected: a fault of one proxy, not of the catalog),
  and that grants nothing the version served refuses. With no such version the fleet holds
  where it is. The next valid edit moves every proxy forward again.

The fleet is the one owner of its history: the snapshots served recently (the rollback
targets), the versions each connected proxy ACKed recently, and the versions Envoy rejected
(listed in the status; the reloader asks `rejection` before serving a build). Their bounds
all derive from one number, the snapshots kept (`Bounds`).

With a state directory (`state_dir.StateDir`), the fleet keeps there each snapshot a proxy
ACKed whole and each rejection, and starts from what it holds: the rejections (so the reloader
refuses a rejected catalog after a restart, or at another replica sharing the directory: it
asks the directory too) and the accepted snapshots (rollback targets, what a stream puts back
after a NACK, and what is served at start when the catalog's version is rejected: `fallback`).

It learns what happens from the streams as an observer (`observers.XdsObserver`: ACKs,
NACKs, closed streams) and what is served from the cache it subscribes to. All of it runs on
the event loop's thread, like the streams and the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from sidecar_shared.bounded import BoundedMap
from xds_server import grants, typeurls
from xds_server.cache import SnapshotCache
from xds_server.metrics import XdsMetrics
from xds_server.observers import Ack, LogBudget, Nack, Observer, StreamEvent, clipped
from xds_server.snapshot import Resource, Snapshot
from xds_server.state_dir import RejectionRecord, StateDir
from xds_server.status import RejectionReport

HISTORY = 8  # snapshots kept to roll back to: every other bound of the history follows
ENVOY = "envoy"  # the `user_agent_name` Envoy sends in its node


@dataclass(frozen=True)
class Voter:
    """A connected stream, as the veto rule sees it."""

    node_id: str
    envoy: bool
    authenticated: bool


@dataclass(frozen=True)
class Bounds:
    """How much of its history the fleet keeps, from the number of snapshots kept."""

    snapshots: int = HISTORY

    @property
    def acked(self) -> int:
        """ACKed versions kept per stream and type: each snapshot served adds at most one
        version of a type to ACK, so as many as the snapshots kept."""
        return self.snapshots

    @property
    def versions(self) -> int:
        """Rejected versions kept (listed in the status, refused by the reloader); and what
        the reloader keeps per version built (`reload.Reloader`), which must cover every kept
        snapshot however often rollbacks reorder them."""
        return 8 * self.snapshots


@dataclass
class Rejection:
    version: str  # the snapshot version rejected
    node_id: str
    type_url: str
    error: str
    at: float
    rollback: bool  # whether rollback was on
    rolled_back_to: str | None = None
    # What a reload that builds this version again is told: the description at rejection.
    refusal: str = ""

    def describe(self) -> str:
        short = typeurls.SHORT_NAMES.get(self.type_url, self.type_url)
        head = (
            f"version {self.version} was rejected by Envoy "
            f"(node {self.node_id or '?'}, {short}): {self.error}"
        )
        if self.rolled_back_to is not None:
            return f"{head}; every proxy was rolled back to {self.rolled_back_to}"
        if not self.rollback:
            return f"{head}; rollback is off"
        return f"{head}; no version every proxy accepted to roll back to"

    def record(self) -> RejectionRecord:
        return RejectionRecord(
            self.version,
            self.node_id,
            self.type_url,
            self.error,
            self.at,
            self.rollback,
            self.rolled_back_to,
            self.refusal,
        )

    @classmethod
    def of_record(cls, r: RejectionRecord) -> Rejection:
        return cls(
            r.version, r.node_id, r.type_url, r.error, r.at, r.rollback, r.rolled_back_to, r.refusal
        )

    def report(self) -> RejectionReport:
        return RejectionReport(
            self.version,
            self.node_id,
            typeurls.SHORT_NAMES.get(self.type_url, self.type_url),
            self.error,
            self.at,
            self.rolled_back_to,
        )


class Fleet(Observer):
    def __init__(
        self,
        cache: SnapshotCache,
        metrics: XdsMetrics,
        log: logging.Logger,
        rollback: bool,
        on_rejected: Callable[[Rejection], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
        bounds: Bounds = Bounds(),
        unauthenticated_veto: bool = False,
        store: StateDir | None = None,
    ) -> None:
        """`unauthenticated_veto`: whether a stream need not be authenticated to vote;
        `store`: the state directory (None: nothing outlives the process)."""
        self._cache = cache
        self._metrics = metrics
        self._log = log
        self.rollback = rollback
        self._on_rejected = on_rejected
        self._clock = clock
        self.bounds = bounds
        self._snapshots: BoundedMap[str, Snapshot] = BoundedMap(bounds.snapshots)
        # stream → type → the versions it ACKed recently, newest last
        self._acked: dict[int, dict[str, BoundedMap[str, None]]] = {}
        self._proven: set[int] = set()  # streams that ACKed a response of ours
        self._rejections: BoundedMap[str, Rejection] = BoundedMap(bounds.versions)
        self.unauthenticated_veto = unauthenticated_veto
        self._streams: dict[int, Voter] = {}  # connected streams, in the order they connected
        self._budget = LogBudget()  # for the lines about NACKs that may not veto
        self._store = store
        self._stored: BoundedMap[str, None] = BoundedMap(bounds.versions)  # kept as accepted
        if store is not None:
            for record in store.rejections():
                self._rejections[record.version] = Rejection.of_record(record)
            for kept in store.accepted_snapshots():
                self._snapshots[kept.version] = kept
                self._stored[kept.version] = None
        current = cache.current()
        if current is not None:
            self._served(current)
        cache.subscribe(self._served)

    def _served(self, snapshot: Snapshot) -> None:
        self._snapshots[snapshot.version] = snapshot

    def acked(self, event: Ack) -> None:
        if not event.node_id:
            return
        if not event.reported:
            self._proven.add(event.stream_id)
        types = self._acked.setdefault(event.stream_id, {})
        versions = types.get(event.type_url)
        if versions is None:
            versions = types[event.type_url] = BoundedMap(self.bounds.acked)
        versions[event.version] = None
        if self._store is not None:
            current = self._cache.current()
            if (
                current is not None
                and current.version not in self._stored
                and all(current.versions[t] in types.get(t, ()) for t in typeurls.PUSH_ORDER)
            ):
                self._stored[current.version] = None
                self._store.accepted_soon(current)

    def fallback(self) -> Snapshot | None:
        """What to serve at start when nothing is and the catalog's version is rejected: the
        newest snapshot kept as accepted that is not rejected (None without one)."""
        for snapshot in reversed(self._snapshots.values()):
            if snapshot.version in self._stored and self.rejection(snapshot.version) is None:
                return snapshot
        return None

    def _refresh(self) -> bool:
        """Read the accepted snapshots another replica kept since; True if any."""
        if self._store is None:
            return False
        fresh = self._store.accepted_snapshots(skip=frozenset(self._snapshots))
        for kept in fresh:
            self._snapshots[kept.version] = kept
        return bool(fresh)

    def connected(self, event: StreamEvent) -> None:
        self._streams[event.stream_id] = Voter(
            event.node_id, event.user_agent == ENVOY, event.authenticated
        )

    def closed(self, event: StreamEvent) -> None:
        self._acked.pop(event.stream_id, None)
        self._proven.discard(event.stream_id)
        self._streams.pop(event.stream_id, None)

    def _firsts(self) -> dict[str, int]:
        """Per node id, its stream connected earliest and still open."""
        firsts: dict[str, int] = {}
        for stream, voter in self._streams.items():
            firsts.setdefault(voter.node_id, stream)
        return firsts

    def may_vote(self, stream_id: int, firsts: Mapping[str, int] | None = None) -> bool:
        """Whether a stream's NACK may veto a version (the rule above), its ACK aside."""
        voter = self._streams.get(stream_id)
        if voter is None or not voter.envoy:
            return False
        if not (voter.authenticated or self.unauthenticated_veto):
            return False
        return (firsts or self._firsts()).get(voter.node_id) == stream_id

    def _proxies_acked(self, voters: bool = True) -> list[Mapping[str, Collection[str]]]:
        """Per connected proxy (that may vote, with `voters`): the versions it ACKed recently
        of each type it has ACKed."""
        firsts = self._firsts() if voters else {}
        return [
            types
            for stream, types in self._acked.items()
            if types and (not voters or self.may_vote(stream, firsts))
        ]

    def with_type_version(self, type_url: str, version: str) -> Snapshot | None:
        """A kept snapshot whose version of `type_url` is `version`, newest first (`restore`:
        what a proxy had before a NACK); the state directory is read again when none is."""
        for _ in range(2):
            for snapshot in reversed(self._snapshots.values()):
                if snapshot.versions.get(type_url) == version:
                    return snapshot
            if not self._refresh():
                break
        return None

    def resource(self, type_url: str, name: str, version: str) -> Resource | None:
        """A kept resource of `type_url` named `name` at `version` (`restore`)."""
        for _ in range(2):
            for snapshot in reversed(self._snapshots.values()):
                found = snapshot.resources.get(type_url, {}).get(name)
                if found is not None and found.version == version:
                    return found
            if not self._refresh():
                break
        return None

    def rejection(self, version: str) -> str | None:
        """Why Envoy rejected `version`, or None if it did not (or it is forgotten); the
        state directory holds the rejections of other replicas too."""
        found = self._rejections.get(version)
        if found is None and self._store is not None:
            record = self._store.rejection(version)
            if record is not None:
                found = self._rejections[version] = Rejection.of_record(record)
        return found.refusal if found is not None else None

    def last_acked_by_all(
        self, where: Callable[[Snapshot], bool] = lambda _: True, voters: bool = False
    ) -> Snapshot | None:
        """The newest snapshot still kept, not rejected and fitting `where`, whose version of
        every type each connected proxy (that may vote, with `voters`) has ACKed (a type a
        proxy has not ACKed yet does not constrain it). None when no kept snapshot fits them
        all (or nothing was served yet).
        """
        proxies = self._proxies_acked(voters)
        for snapshot in reversed(self._snapshots.values()):
            if (
                snapshot.version not in self._rejections
                and where(snapshot)
                and all(
                    all(snapshot.versions.get(t) in vs for t, vs in versions.items())
                    for versions in proxies
                )
            ):
                return snapshot
        return None

    def nacked(self, event: Nack) -> None:
        if not event.version or not event.snapshot_version:
            return  # no response of ours was answered
        if not (self.may_vote(event.stream_id) and event.stream_id in self._proven):
            if (dropped := self._budget.take()) is not None:
                self._log.warning(
                    "a NACK from a proxy that may not veto a version; the version stays",
                    extra={
                        "fields": {
                            "node_id": clipped(event.node_id),
                            "stream": event.stream_id,
                            "suppressed": dropped,
                        }
                    },
                )
            return
        if any(event.version in acked.get(event.type_url, ()) for acked in self._proxies_acked()):
            self._log.warning(
                "a proxy rejected what others accepted; the version stays",
                extra={"fields": {"node_id": event.node_id, "version": event.snapshot_version}},
            )
            return
        current = self._cache.current()
        holding = [event.snapshot_version]
        if (
            current is not None
            and current.version != event.snapshot_version
            and current.versions.get(event.type_url) == event.version
        ):
            holding.append(current.version)
        fresh = [v for v in holding if v not in self._rejections]
        for version in fresh:
            rejection = Rejection(
                version, event.node_id, event.type_url, event.error, self._clock(), self.rollback
            )
            rejection.refusal = rejection.describe()
            self._rejections[version] = rejection
        try:
            self._nacked_served(event, current, fresh)
        finally:
            if self._store is not None:
                for version in fresh:
                    self._store.rejected(self._rejections[version].record())

    def _nacked_served(self, event: Nack, current: Snapshot | None, fresh: list[str]) -> None:
        """The rest of `nacked`: roll back when the version served now was just rejected."""
        if current is None or current.version not in fresh:
            return  # not what is served now, or already handled at another proxy's NACK
        rejection = self._rejections[current.version]
        if self.rollback:
            served = current
            target = self.last_acked_by_all(
                where=lambda s: (
                    s.versions.get(event.type_url) != event.version
                    and not grants.grants_more(s, served)
                ),
                voters=True,
            )
            if target is not None:
                rejection.rolled_back_to = target.version
                self._cache.set(target)
                self._metrics.rollbacks.inc()
        self._log.error(
            "a version was rejected by Envoy",
            extra={"fields": {**rejection.report().to_json(), "detail": rejection.describe()}},
        )
        self._on_rejected(rejection)

    def report(self) -> tuple[RejectionReport, ...]:
        """The rejected versions still remembered, newest first."""
        return tuple(r.report() for r in reversed(self._rejections.values()))
