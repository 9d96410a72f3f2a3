"""Snapshots and a snapshot source for unit tests of the xDS streams, the cache and the fleet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tests.support.translation import build_snapshot
from xds_server.catalog import parse_catalog
from xds_server.snapshot import Snapshot
from xds_server.translate import Options


class FakeSource:
    """A `SnapshotSource` whose current snapshot a test sets."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot

    def current(self) -> Snapshot | None:
        return self.snapshot

    def subscribe(self, listener: Callable[[Snapshot], None]) -> Callable[[], None]:
        return lambda: None


def snap(
    *names: str,
    timeout_ms: int = 1000,
    connect_timeout_ms: int = 1000,
    edits: Mapping[str, Mapping[str, Any]] | None = None,
) -> Snapshot:
    """A snapshot of services `names` (each on its own loopback port, so EDS); `edits` sets
    fields of some of them."""
    services = [
        {
            "service_name": n,
            "base_path": f"/{n}",
            "internal_url": f"http://127.0.0.1:{8000 + i}",
            "timeout_ms": timeout_ms,
            "connect_timeout_ms": connect_timeout_ms,
            **(edits or {}).get(n, {}),
        }
        for i, n in enumerate(names)
    ]
    return build_snapshot(parse_catalog({"services": services}), Options())
