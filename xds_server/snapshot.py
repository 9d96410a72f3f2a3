"""An immutable, versioned set of resources: the unit the cache swaps and the server sends.

Versions are content hashes: the same resources give the same versions on every replica, and a
type's version changes only when that type's resources do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server import typeurls


@dataclass(frozen=True)
class Resource:
    name: str
    message: Message
    packed: any_pb2.Any
    version: str  # hash of this resource alone (Delta xDS sends it per resource)

    @cached_property
    def delta(self) -> discovery_pb2.Resource:
        """The resource as a Delta response carries it (built once, shared by every stream)."""
        return discovery_pb2.Resource(name=self.name, version=self.version, resource=self.packed)


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

    @classmethod
    def build(cls, by_type: Mapping[str, Sequence[tuple[str, Message]]]) -> Snapshot:
        resources: dict[str, Mapping[str, Resource]] = {}
        versions: dict[str, str] = {}
        for type_url in typeurls.PUSH_ORDER:
            named: dict[str, Resource] = {}
            for name, msg in sorted(by_type.get(type_url, ()), key=lambda item: item[0]):
                if name in named:
                    raise ValueError(f"two {typeurls.SHORT_NAMES[type_url]} named {name!r}")
                packed = any_pb2.Any()
                packed.Pack(msg, deterministic=True)
                named[name] = Resource(name, msg, packed, _digest([packed.value]))
            resources[type_url] = MappingProxyType(named)
            versions[type_url] = _digest(
                r.name.encode() + b"\0" + r.version.encode() for r in named.values()
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
        return [of_type[n] for n in sorted(names) if n in of_type]

    def consistent(self) -> list[str]:
        """Problems that would leave Envoy warming or answering 503; empty when servable."""
        problems: list[str] = []
        clusters = self.resources.get(typeurls.CLUSTER, {})
        endpoints = self.names(typeurls.ENDPOINT)
        routes = self.resources.get(typeurls.ROUTE, {})
        eds_names: set[str] = set()
        for res in clusters.values():
            c = res.message
            assert isinstance(c, cluster_pb2.Cluster)
            if c.type == cluster_pb2.Cluster.EDS:
                wanted = c.eds_cluster_config.service_name or c.name
                eds_names.add(wanted)
                if wanted not in endpoints:
                    problems.append(f"cluster {c.name!r} has no endpoints {wanted!r}")
        problems.extend(
            f"endpoints {n!r} belong to no cluster" for n in sorted(endpoints - eds_names)
        )
        for res in self.resources.get(typeurls.LISTENER, {}).values():
            lst = res.message
            assert isinstance(lst, listener_pb2.Listener)
            for name in _route_config_names(lst):
                if name not in routes:
                    problems.append(f"listener {lst.name!r} names missing routes {name!r}")
        for res in routes.values():
            rc = res.message
            assert isinstance(rc, route_pb2.RouteConfiguration)
            for vh in rc.virtual_hosts:
                for r in vh.routes:
                    if r.HasField("route") and r.route.cluster and r.route.cluster not in clusters:
                        problems.append(
                            f"route {r.name!r} in {rc.name!r} names missing cluster "
                            f"{r.route.cluster!r}"
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
