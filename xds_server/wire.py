"""Discovery responses as the bytes Envoy receives, built once and shared by every stream.

A serialized protobuf message is the concatenation of its serialized fields, in any order. So
what every stream sends alike (SotW: a type's resources, version and type URL for the names
subscribed; Delta: each resource with its name and version) is serialized once, and a stream
adds only its own fields (the nonce, Delta's removals). With 100 proxies and 10,000 services,
building and serializing each stream's response (a 6 MB route configuration each time) took
most of an edit's time.

`Wire` must be used from the event loop's thread, like the streams.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.snapshot import Resource, Snapshot

# DiscoveryResponse.nonce and DeltaDiscoveryResponse.resources (field numbers).
_SOTW_NONCE = 5
_DELTA_RESOURCES = 2
# Delta resource fields up to this size are kept on the resource (every snapshot that holds it
# shares them); larger ones (a route configuration) are kept here, for the recent ones only.
_KEEP_ON_RESOURCE = 64 * 1024


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) as serialized."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class Wire:
    """What was serialized for the snapshot streams send now (streams send the current
    snapshot only, so what another snapshot needed is let go)."""

    def __init__(self, kept: int = 32) -> None:
        self._kept = kept
        self._snapshot = ""
        self._recent: OrderedDict[Hashable, tuple[bytes, list[str]]] = OrderedDict()

    def _for(self, snapshot_version: str) -> None:
        if snapshot_version != self._snapshot:
            self._snapshot = snapshot_version
            self._recent.clear()

    def _remember(self, key: Hashable, value: tuple[bytes, list[str]]) -> None:
        self._recent[key] = value
        while len(self._recent) > self._kept:
            self._recent.popitem(last=False)

    def sotw_body(
        self, snapshot: Snapshot, type_url: str, names: frozenset[str] | None
    ) -> tuple[bytes, list[str]]:
        """A SotW response without its nonce (`sotw`), for the names subscribed (None: all);
        and the names of the resources it holds."""
        self._for(snapshot.version)
        key = ("sotw", type_url, names)
        found = self._recent.get(key)
        if found is None:
            resources = snapshot.pick(type_url, names)
            body = discovery_pb2.DiscoveryResponse(
                version_info=snapshot.versions[type_url],
                type_url=type_url,
                resources=[r.packed for r in resources],
            ).SerializeToString()
            found = (body, [r.name for r in resources])
            self._remember(key, found)
        else:
            self._recent.move_to_end(key)
        return found

    @staticmethod
    def sotw(body: bytes, nonce: str) -> bytes:
        return body + field(_SOTW_NONCE, nonce.encode())

    def delta(
        self,
        snapshot: Snapshot,
        type_url: str,
        nonce: str,
        updates: Sequence[Resource],
        removed: Sequence[str],
    ) -> bytes:
        """A Delta response of `type_url` from `snapshot`."""
        self._for(snapshot.version)
        version = snapshot.versions[type_url]
        rest = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            nonce=nonce,
            removed_resources=removed,
        ).SerializeToString()
        return b"".join([*(self._delta_resource(r) for r in updates), rest])

    def _delta_resource(self, r: Resource) -> bytes:
        kept: bytes | None = r.__dict__.get("_delta_field")
        if kept is not None:
            return kept
        key = ("delta", r.packed.type_url, r.name)
        found = self._recent.get(key)
        if found is not None:
            self._recent.move_to_end(key)
            return found[0]
        made = field(
            _DELTA_RESOURCES,
            discovery_pb2.Resource(
                name=r.name, version=r.version, resource=r.packed
            ).SerializeToString(),
        )
        if len(made) <= _KEEP_ON_RESOURCE:
            object.__setattr__(r, "_delta_field", made)  # the resource is immutable otherwise
        else:
            self._remember(key, (made, []))
        return made
