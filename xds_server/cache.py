"""The snapshot served now, and who wants to hear when it changes.

The server depends on `SnapshotSource` only. `SnapshotCache` is its implementation; it must be
used from the event loop's thread. It remembers nothing but the snapshot served now: what was
served before, ACKed or rejected is the fleet's history (`fleet.Fleet`, a subscriber).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from xds_server.snapshot import Snapshot

Listener = Callable[[Snapshot], None]


class SnapshotSource(Protocol):
    def current(self) -> Snapshot | None:
        """The snapshot to serve now, or None before the first valid catalog."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with each new snapshot; returns the function that unsubscribes."""


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._listeners: dict[int, Listener] = {}
        self._next_id = 0

    def current(self) -> Snapshot | None:
        return self._snapshot

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Listeners are called in the order they subscribed."""
        key = self._next_id
        self._next_id += 1
        self._listeners[key] = listener

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def set(self, snapshot: Snapshot) -> bool:
        """Serve `snapshot` from now on. Returns False (and tells nobody) if nothing changed.

        The caller must have checked `snapshot.consistent()`.
        """
        if self._snapshot is not None and self._snapshot.version == snapshot.version:
            return False
        self._snapshot = snapshot
        for listener in list(self._listeners.values()):
            listener(snapshot)
        return True
