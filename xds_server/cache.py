"""The current snapshot, the recent ones, and who wants to hear when it changes.

The server depends on `SnapshotSource` only. `SnapshotCache` is its implementation; it must be
used from the event loop's thread. It keeps the last `history` snapshots served, newest last,
so that the version every connected proxy has ACKed can be found again (`last_acked_by_all`),
to roll a fleet back to it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from xds_server.snapshot import Snapshot

Listener = Callable[[Snapshot], None]


class SnapshotSource(Protocol):
    def current(self) -> Snapshot | None:
        """The snapshot to serve now, or None before the first valid catalog."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with each new snapshot; returns the function that unsubscribes."""


class SnapshotCache:
    def __init__(self, history: int = 16) -> None:
        self._snapshot: Snapshot | None = None
        self._history: OrderedDict[str, Snapshot] = OrderedDict()
        self._history_size = history
        self._listeners: dict[int, Listener] = {}
        self._next_id = 0

    def current(self) -> Snapshot | None:
        return self._snapshot

    def subscribe(self, listener: Listener) -> Callable[[], None]:
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
        self._history.pop(snapshot.version, None)
        self._history[snapshot.version] = snapshot
        while len(self._history) > self._history_size:
            self._history.popitem(last=False)
        for listener in list(self._listeners.values()):
            listener(snapshot)
        return True

    def last_acked_by_all(self, acked: Iterable[Mapping[str, str]]) -> Snapshot | None:
        """The newest snapshot still kept whose version of every type each proxy has ACKed.

        `acked` holds, per connected proxy, the version it ACKed of each type it subscribes to.
        None when no kept snapshot fits them all (or nothing was served yet).
        """
        proxies = list(acked)
        for snapshot in reversed(self._history.values()):
            if all(
                all(snapshot.versions.get(t) == v for t, v in versions.items())
                for versions in proxies
            ):
                return snapshot
        return None
