"""What each connected Envoy has: per resource type, the version it ACKed or the one it NACKed;
and the streams refused.

Streams write their own `ProxyStatus`; `ProxyRegistry.report` reads them all. Both run on the
event loop's thread. The versions a proxy ACKed before its latest are the fleet's history
(`fleet.Fleet`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sidecar_shared.bounded import BoundedMap
from xds_server import typeurls
from xds_server.snapshot import Snapshot
from xds_server.status import Nacked, ProxyReport, RefusalReport, State, TypeReport


@dataclass
class TypeStatus:
    sent_version: str | None = None
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None
    # Envoy rejected a response of this type and what it had could not be put back: it may run
    # part of the rejected version (`restore`), until it ACKs a whole one.
    partial: bool = False

    def acked(self, version: str) -> None:
        self.acked_version = version


@dataclass
class ProxyStatus:
    stream_id: int
    protocol: str = "sotw"  # or "delta"
    node_id: str = ""
    node_cluster: str = ""
    user_agent: str = ""  # the node's `user_agent_name` ("envoy" for Envoy)
    peer: str = ""  # the client's address, as gRPC names it ("ipv4:127.0.0.1:40000")
    # The client certificate's identities (SANs, else its subject CN) when the stream is
    # authenticated by mTLS; empty when not.
    identities: tuple[str, ...] = ()
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def of(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())


def state_of(status: TypeStatus, current: str | None) -> State:
    """A type's state when `current` is the version of it served now."""
    if current is not None and status.acked_version == current:
        return State.SYNCED
    if current is not None and status.nacked_version == current:
        return State.NACKED
    return State.STALE


@dataclass
class Refusal:
    """Streams refused for one reason from one node: a proxy that cannot talk to us."""

    node_id: str
    peer: str
    reason: str
    first_at: float
    last_at: float
    count: int = 1


MAX_REFUSALS = 1000


class ProxyRegistry:
    def __init__(self) -> None:
        self._proxies: dict[int, ProxyStatus] = {}
        self._next_id = 0
        self._refusals: BoundedMap[tuple[str, str], Refusal] = BoundedMap(MAX_REFUSALS)

    def refuse(self, node_id: str, peer: str, reason: str, now: float) -> Refusal:
        """Record a refused stream; returns its record (`count` 1 on the first of its kind).

        Keeps the `MAX_REFUSALS` most recent (node, reason) pairs."""
        key = (node_id, reason)
        found = self._refusals.get(key)
        if found is None:
            found = Refusal(node_id, peer, reason, now, now)
        else:
            found.count += 1
            found.last_at = now
            found.peer = peer
        self._refusals[key] = found  # now the newest
        return found

    def accepted(self, node_id: str) -> None:
        """`node_id` now has a working stream: its past refusals are no longer news."""
        for key in [k for k in self._refusals if k[0] == node_id]:
            del self._refusals[key]

    def refusals(self) -> tuple[RefusalReport, ...]:
        """The refused streams remembered, by node and reason."""
        return tuple(
            RefusalReport(r.node_id, r.peer, r.reason, r.count, r.first_at, r.last_at)
            for r in sorted(self._refusals.values(), key=lambda r: (r.node_id, r.reason))
        )

    def open(self, protocol: str = "sotw") -> ProxyStatus:
        self._next_id += 1
        status = ProxyStatus(self._next_id, protocol)
        self._proxies[status.stream_id] = status
        return status

    def close(self, status: ProxyStatus) -> None:
        self._proxies.pop(status.stream_id, None)

    def __iter__(self) -> Iterator[ProxyStatus]:
        return iter(list(self._proxies.values()))

    def __len__(self) -> int:
        return len(self._proxies)

    def states(self, snapshot: Snapshot | None) -> dict[State, int]:
        """Proxies by the worst state of their types (every state present, 0 when none)."""
        counts = dict.fromkeys(State, 0)
        for proxy in self:
            worst = State.worst(
                state_of(st, snapshot.versions.get(t) if snapshot else None)
                for t, st in proxy.types.items()
            )
            counts[worst] += 1
        return counts

    def report(self, snapshot: Snapshot | None) -> tuple[ProxyReport, ...]:
        """Every connected proxy's state of each type against `snapshot` (the one served now),
        by node id and connection time."""
        out = []
        for proxy in self:
            types = {}
            for type_url, st in proxy.types.items():
                current = snapshot.versions.get(type_url) if snapshot else None
                nacked = (
                    Nacked(st.nacked_version, st.error or "")
                    if st.nacked_version is not None
                    else None
                )
                types[typeurls.SHORT_NAMES.get(type_url, type_url)] = TypeReport(
                    state_of(st, current), st.acked_version, current, nacked, st.partial
                )
            out.append(
                ProxyReport(
                    proxy.node_id,
                    proxy.node_cluster,
                    proxy.protocol,
                    proxy.connected_at,
                    types,
                    proxy.peer,
                    proxy.user_agent,
                    bool(proxy.identities),
                )
            )
        return tuple(sorted(out, key=lambda p: (p.node_id, p.connected_at)))
