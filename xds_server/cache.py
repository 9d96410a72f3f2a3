"""The current snapshot, the recent ones, and who wants to hear when it changes.

The server depends on `SnapshotSource` only. `SnapshotCache` is its implementation; it must be
used from the event loop's thread. It keeps the last `history` snapshots served, newest last,
so that the version every connected proxy has ACKed can be found again (`last_acked_by_all`),
to roll a fleet back to it, and it remembers which versions Envoy rejected (`reject`), so that
they are not served again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol

from xds_server.snapshot import Snapshot

Listener = Callable[[Snapshot], None]


class SnapshotSource(Protocol):
    def current(self) -> Snapshot | None:
        """The snapshot to serve now, or None before the first valid catalog."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with each new snapshot; returns the function that unsubscribes."""


class SnapshotCache:
    def __init__(self, history: int = 8) -> None:
        self._snapshot: Snapshot | None = None
        self._history: OrderedDict[str, Snapshot] = OrderedDict()
        self._history_size = history
        self._listeners: dict[int, Listener] = {}
        self._next_id = 0
        self._rejected: OrderedDict[str, str] = OrderedDict()  # version → why

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

    def reject(self, version: str, why: str) -> None:
        """Envoy rejected `version`: remember it (the most recent `4 * history` are kept)."""
        self._rejected.setdefault(version, why)
        while len(self._rejected) > 4 * self._history_size:
            self._rejected.popitem(last=False)

    def rejection(self, version: str) -> str | None:
        """Why Envoy rejected `version`, or None if it did not."""
        return self._rejected.get(version)

    def last_acked_by_all(
        self,
        acked: Iterable[Mapping[str, Collection[str]]],
        where: Callable[[Snapshot], bool] = lambda _: True,
    ) -> Snapshot | None:
        """The newest snapshot still kept, not rejected and fitting `where`, whose version of
        every type each proxy has ACKed.

        `acked` holds, per connected proxy, the versions it ACKed recently of each type it has
        ACKed (a type a proxy has not ACKed yet does not constrain it). None when no kept
        snapshot fits them all (or nothing was served yet).
        """
        proxies = list(acked)
        for snapshot in reversed(self._history.values()):
            if (
                snapshot.version not in self._rejected
                and where(snapshot)
                and all(
                    all(snapshot.versions.get(t) in vs for t, vs in versions.items())
                    for versions in proxies
                )
            ):
                return snapshot
        return None
