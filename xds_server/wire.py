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

from collections.abc import Hashable, Sequence

from envoy.service.discovery.v3 import discovery_pb2

from sidecar_shared.bounded import BoundedMap
from xds_server.snapshot import Resource, Snapshot

# DiscoveryResponse.nonce and DeltaDiscoveryResponse.resources (field numbers).
_SOTW_NONCE = 5
_DELTA_RESOURCES = 2
# Delta resource fields up to this size are kept by name and version for as long as the
# snapshot served holds that name (every snapshot that holds the resource shares them); larger
# ones (a route configuration) are kept for the snapshot served only, the recent ones only.
_KEEP_BY_NAME = 64 * 1024


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
        self._snapshot = ""
        self._recent: BoundedMap[Hashable, tuple[bytes, list[str]]] = BoundedMap(kept)
        # type URL → name → (the resource's version, its Delta field), for small fields
        self._fields: dict[str, dict[str, tuple[str, bytes]]] = {}

    def _for(self, snapshot: Snapshot) -> None:
        if snapshot.version == self._snapshot:
            return
        self._snapshot = snapshot.version
        self._recent.clear()
        for type_url, fields in self._fields.items():
            resources = snapshot.resources.get(type_url, {})
            for gone in [name for name in fields if name not in resources]:
                del fields[gone]

    def sotw_body(
        self, snapshot: Snapshot, type_url: str, names: frozenset[str] | None
    ) -> tuple[bytes, list[str]]:
        """A SotW response without its nonce (`sotw`), for the names subscribed (None: all);
        and the names of the resources it holds."""
        self._for(snapshot)
        key = ("sotw", type_url, names)
        found = self._recent.touch(key)
        if found is None:
            resources = snapshot.pick(type_url, names)
            body = discovery_pb2.DiscoveryResponse(
                version_info=snapshot.versions[type_url],
                type_url=type_url,
                resources=[r.packed for r in resources],
            ).SerializeToString()
            found = (body, [r.name for r in resources])
            self._recent[key] = found
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
        self._for(snapshot)
        version = snapshot.versions[type_url]
        rest = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            nonce=nonce,
            removed_resources=removed,
        ).SerializeToString()
        return b"".join([*(self._delta_resource(r) for r in updates), rest])

    def _delta_resource(self, r: Resource) -> bytes:
        fields = self._fields.setdefault(r.packed.type_url, {})
        kept = fields.get(r.name)
        if kept is not None and kept[0] == r.version:
            return kept[1]
        key = ("delta", r.packed.type_url, r.name)
        found = self._recent.touch(key)
        if found is not None:
            return found[0]
        made = field(
            _DELTA_RESOURCES,
            discovery_pb2.Resource(
                name=r.name, version=r.version, resource=r.packed
            ).SerializeToString(),
        )
        if len(made) <= _KEEP_BY_NAME:
            fields[r.name] = (r.version, made)
        else:
            self._recent[key] = (made, [])
        return made
