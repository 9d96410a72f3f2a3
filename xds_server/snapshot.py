"""An immutable, versioned set of resources: the unit the cache swaps and the server sends.

Versions are content hashes: the same resources give the same versions on every replica, and a
type's version changes only when that type's resources do. A snapshot keeps each resource as
the bytes Envoy is sent, and what it names of other types (for `consistent()`); the message is
parsed again from the bytes when asked for, so that the recent snapshots kept for rollback cost
little (with 10,000 services the messages take several times the memory of their bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server import typeurls

Refs = tuple[tuple[str, str], ...]
"""What a resource names of another type, as (what names it, the name): a cluster its
endpoints, a listener its route configurations, a route configuration the clusters of its
routes."""


def references(message: Message) -> Refs:
    if isinstance(message, cluster_pb2.Cluster):
        if message.type != cluster_pb2.Cluster.EDS:
            return ()
        return ((message.name, message.eds_cluster_config.service_name or message.name),)
    if isinstance(message, listener_pb2.Listener):
        return tuple((message.name, name) for name in _route_config_names(message))
    if isinstance(message, route_pb2.RouteConfiguration):
        return tuple(ref for vh in message.virtual_hosts for ref in route_references(vh.routes))
    return ()


def route_references(routes: Iterable[route_components_pb2.Route]) -> Refs:
    """The clusters `routes` name, by route."""
    return tuple(
        (r.name, r.route.cluster) for r in routes if r.HasField("route") and r.route.cluster
    )


@dataclass(frozen=True)
class Resource:
    name: str
    packed: any_pb2.Any
    version: str  # hash of this resource alone (Delta xDS sends it per resource)
    refs: Refs

    @classmethod
    def of(cls, name: str, message: Message, refs: Refs | None = None) -> Resource:
        """`refs`: what the message names, when the caller already knows it."""
        packed = any_pb2.Any()
        packed.Pack(message, deterministic=True)
        refs = references(message) if refs is None else refs
        return cls(name, packed, _digest([packed.value]), refs)

    @property
    def message(self) -> Message:
        """The resource, parsed from its bytes (a new message at each call)."""
        return typeurls.MESSAGES[self.packed.type_url].FromString(self.packed.value)


_name = attrgetter("name")


def _digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "big"))
        h.update(c)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """Resources by type URL, then by name. Neither the snapshot nor its maps may be altered."""

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    versions: Mapping[str, str]
    # (an earlier snapshot's version, type) → `changes_since` it, computed once for every stream
    _changes: dict[tuple[str, str], tuple[list[str], list[str]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, by_type: Mapping[str, Sequence[tuple[str, Message]]]) -> Snapshot:
        """From messages by type, each as (name, message)."""
        return cls.of(
            {t: [Resource.of(name, msg) for name, msg in items] for t, items in by_type.items()}
        )

    @classmethod
    def of(cls, by_type: Mapping[str, Iterable[Resource]]) -> Snapshot:
        """From resources already packed (by `Resource.of`; an incremental build reuses the
        unchanged ones)."""
        resources: dict[str, Mapping[str, Resource]] = {}
        versions: dict[str, str] = {}
        for type_url in typeurls.PUSH_ORDER:
            ordered = sorted(by_type.get(type_url, ()), key=_name)
            named = {r.name: r for r in ordered}
            if len(named) != len(ordered):
                twice = sorted(
                    {r.name for r in ordered if sum(o.name == r.name for o in ordered) > 1}
                )
                raise ValueError(f"two {typeurls.SHORT_NAMES[type_url]} named {twice[0]!r}")
            resources[type_url] = MappingProxyType(named)
            # Names are catalog names and versions hex: "\0" and "\n" cannot occur in them.
            versions[type_url] = _digest(
                ["\n".join(f"{r.name}\0{r.version}" for r in ordered).encode()]
            )
        version = _digest(versions[t].encode() for t in typeurls.PUSH_ORDER)
        return cls(version, MappingProxyType(resources), MappingProxyType(versions))

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.resources.get(type_url, {}))

    def pick(self, type_url: str, names: frozenset[str] | None) -> list[Resource]:
        """The resources of a type, all of them (names None) or those named, by name."""
        of_type = self.resources.get(type_url, {})
        if names is None:
            return list(of_type.values())
        if len(names) < len(of_type) // 8:
            return [of_type[n] for n in sorted(names) if n in of_type]
        return [r for n, r in of_type.items() if n in names]  # the mapping is sorted by name

    def changes_since(self, earlier: Snapshot, type_url: str) -> tuple[list[str], list[str]]:
        """The names of `type_url` added or changed since `earlier`, and those removed, each by
        name. Computed once per pair: every Delta stream that had `earlier` asks."""
        key = (earlier.version, type_url)
        found = self._changes.get(key)
        if found is None:
            new = self.resources.get(type_url, {})
            old = earlier.resources.get(type_url, {})
            changed = [
                n
                for n, r in new.items()
                if (o := old.get(n)) is None or (o is not r and o.version != r.version)
            ]
            found = (changed, [n for n in old if n not in new])
            if len(self._changes) >= 64:
                self._changes.clear()
            self._changes[key] = found
        return found

    def consistent(self) -> list[str]:
        """Problems that would leave Envoy warming or answering 503; empty when servable."""
        problems: list[str] = []
        clusters = self.resources.get(typeurls.CLUSTER, {})
        endpoints = self.resources.get(typeurls.ENDPOINT, {})
        routes = self.resources.get(typeurls.ROUTE, {})
        eds_names: set[str] = set()
        for res in clusters.values():
            for cluster, wanted in res.refs:
                eds_names.add(wanted)
                if wanted not in endpoints:
                    problems.append(f"cluster {cluster!r} has no endpoints {wanted!r}")
        problems.extend(
            f"endpoints {n!r} belong to no cluster" for n in sorted(endpoints.keys() - eds_names)
        )
        for res in self.resources.get(typeurls.LISTENER, {}).values():
            for listener, name in res.refs:
                if name not in routes:
                    problems.append(f"listener {listener!r} names missing routes {name!r}")
        for res in routes.values():
            for route, cluster in res.refs:
                if cluster not in clusters:
                    problems.append(
                        f"route {route!r} in {res.name!r} names missing cluster {cluster!r}"
                    )
        return problems


def _route_config_names(lst: listener_pb2.Listener) -> list[str]:
    names = []
    for chain in lst.filter_chains:
        for f in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                names.append(manager.rds.route_config_name)
    return names
