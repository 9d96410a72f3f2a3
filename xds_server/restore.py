"""Putting back what Envoy applied of a response it rejected (pure, but for the history asked).

What Envoy does with a response it rejects: it applies each resource of it independently
(each listener, each cluster, each route configuration) and NACKs the response if any of
them fails; the ones that passed are in use, and the `version_info` it reports stays the one
it last accepted. So a NACK alone may leave a proxy running part of the rejected version
beside part of the previous one: a main listener with a new filter that needs a side listener
Envoy refused, answering 503.

So on a NACK a stream sends that proxy, at once, the resources of that type it last accepted,
as a response of their own (`sotw.SotwStream`, `delta.DeltaStream`): whatever Envoy applied of
the rejected response is replaced by what it had, and the proxy runs one whole version again.
What it had is found in the history (`History`: the snapshots the fleet keeps, and those a
state directory kept across restarts, `state_dir`), by what Envoy reports: in SotW the
`version_info` of the NACK (the version it keeps); in Delta the version each resource had
before the rejected response (known from what was sent, or from `initial_resource_versions`
after a reconnect). When it is not found (a version older than the history, or one from a
server that kept no state), nothing can be put back: the proxy's status says it may run part of
the rejected version (`partial`), until it accepts a whole one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.snapshot import Resource, Snapshot


class History(Protocol):
    """Snapshots served before (`fleet.Fleet`)."""

    def with_type_version(self, type_url: str, version: str) -> Snapshot | None:
        """A kept snapshot whose version of `type_url` is `version`, or None."""

    def resource(self, type_url: str, name: str, version: str) -> Resource | None:
        """A kept resource of `type_url` named `name` at `version`, or None."""


class NoHistory:
    """A history that kept nothing (tests; a stream with no fleet)."""

    def with_type_version(self, type_url: str, version: str) -> Snapshot | None:
        return None

    def resource(self, type_url: str, name: str, version: str) -> Resource | None:
        return None


def sotw_body(
    snapshot: Snapshot, type_url: str, names: frozenset[str] | None
) -> tuple[bytes, list[str]]:
    """A SotW response without its nonce (`wire.Wire.sotw`) of `snapshot`'s resources of
    `type_url` (those named; None: all) at its version of that type; and the names it holds.
    Not cached: a restore is rare."""
    resources = snapshot.pick(type_url, names)
    body = discovery_pb2.DiscoveryResponse(
        version_info=snapshot.versions[type_url],
        type_url=type_url,
        resources=[r.packed for r in resources],
    ).SerializeToString()
    return body, [r.name for r in resources]


def delta_response(
    type_url: str, version: str, nonce: str, updates: Sequence[Resource], removed: Sequence[str]
) -> bytes:
    """A Delta response putting back `updates` and removing `removed`."""
    out: bytes = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version,
        type_url=type_url,
        nonce=nonce,
        resources=[
            discovery_pb2.Resource(name=r.name, version=r.version, resource=r.packed)
            for r in updates
        ],
        removed_resources=list(removed),
    ).SerializeToString()
    return out
