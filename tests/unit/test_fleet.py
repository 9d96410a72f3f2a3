"""Fleet rollback when Envoy rejects a version: back to the newest version every proxy ACKed,
the rejected one listed and never served again, and nothing done for a proxy's own fault."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from tests.support.snapshots import snap
from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.fleet import Bounds, Fleet, Rejection
from xds_server.metrics import XdsMetrics
from xds_server.observers import Ack, Nack, StreamEvent
from xds_server.snapshot import Snapshot

CDS, LDS = typeurls.CLUSTER, typeurls.LISTENER

V1 = snap("a")
V2 = snap("a", "b")
V3 = snap("a", "b", "bad")  # the version Envoy rejects


class Rig:
    def __init__(self, *served: Snapshot, rollback: bool = True) -> None:
        self.cache = SnapshotCache()
        self.registry = CollectorRegistry()
        self.told: list[Rejection] = []
        self.fleet = Fleet(
            self.cache,
            XdsMetrics(self.registry),
            logging.getLogger("test"),
            rollback,
            self.told.append,
            clock=lambda: 100.0,
        )
        for s in served:
            self.cache.set(s)
        self.streams = 0
        self.ids: dict[str, int] = {}

    def proxy(self, node_id: str, *acked: Snapshot) -> int:
        """A connected proxy (an authenticated Envoy) that ACKed `acked`, in order; returns its
        stream's id."""
        self.streams += 1
        self.ids.setdefault(node_id, self.streams)
        self.fleet.connected(
            StreamEvent(self.streams, "sotw", node_id, user_agent="envoy", authenticated=True)
        )
        for s in acked:
            for type_url, version in s.versions.items():
                self.fleet.acked(Ack(self.streams, node_id, type_url, version))
        return self.streams

    def ack(self, node_id: str, s: Snapshot, type_url: str) -> None:
        """The proxy's stream ACKs one type of `s` (a proxy that proved itself)."""
        self.fleet.acked(Ack(self.ids[node_id], node_id, type_url, s.versions[type_url]))

    def nack(self, node_id: str, s: Snapshot, type_url: str = CDS) -> None:
        stream = self.ids.get(node_id, 0)
        self.fleet.nacked(
            Nack(node_id, type_url, s.versions[type_url], s.version, "boom", stream_id=stream)
        )

    def current(self) -> str | None:
        current = self.cache.current()
        return current.version if current else None


def test_a_rejected_version_moves_every_proxy_back_to_the_newest_one_all_acked() -> None:
    rig = Rig(V1, V2, V3)
    rig.proxy("edge-a", V1, V2)
    rig.proxy("edge-b", V1, V2)
    rig.nack("edge-b", V3)
    assert rig.current() == V2.version
    (told,) = rig.told
    assert told.rolled_back_to == V2.version
    assert told.describe() == (
        f"version {V3.version} was rejected by Envoy (node edge-b, clusters): boom; "
        f"every proxy was rolled back to {V2.version}"
    )
    assert rig.fleet.rejection(V3.version) is not None
    assert rig.registry.get_sample_value("xds_rollbacks_total") == 1
    (listed,) = rig.fleet.report()
    assert listed.to_json() == {
        "version": V3.version,
        "node_id": "edge-b",
        "type": "clusters",
        "error": "boom",
        "at": 100.0,
        "rolled_back_to": V2.version,
    }


def test_a_proxy_that_never_acked_the_last_version_keeps_the_fleet_on_an_older_one() -> None:
    rig = Rig(V1, V2, V3)
    rig.proxy("edge-a", V1, V2)
    rig.proxy("slow", V1)
    rig.nack("edge-a", V3)
    assert rig.current() == V1.version


def test_with_rollback_off_the_version_is_marked_and_the_fleet_stays() -> None:
    rig = Rig(V1, V2, V3, rollback=False)
    rig.proxy("edge-a", V1, V2)
    rig.nack("edge-a", V3)
    assert rig.current() == V3.version
    (told,) = rig.told
    assert told.rolled_back_to is None and told.describe().endswith("; rollback is off")
    assert rig.fleet.rejection(V3.version) is not None


def test_with_no_version_every_proxy_acked_the_fleet_holds() -> None:
    rig = Rig(V3)
    rig.proxy("edge-a")
    rig.ack("edge-a", V3, LDS)
    rig.nack("edge-a", V3)
    assert rig.current() == V3.version
    (told,) = rig.told
    assert told.describe().endswith("; no version every proxy accepted to roll back to")


def test_rejecting_what_another_proxy_accepted_is_that_proxys_fault() -> None:
    # Its listener port is taken, say: the version is not marked, nothing moves.
    rig = Rig(V1, V2)
    rig.proxy("edge-a", V1, V2)
    rig.proxy("broken", V1)
    rig.nack("broken", V2, LDS)
    assert rig.current() == V2.version
    assert rig.fleet.rejection(V2.version) is None
    assert rig.told == [] and rig.fleet.report() == ()


def test_a_rejection_that_going_back_would_not_change_does_not_roll_back() -> None:
    # The listener is the same in every version: going back would send the same listener.
    rig = Rig(V1, V2)
    rig.proxy("only")
    rig.ack("only", V1, CDS)
    rig.nack("only", V2, LDS)
    assert rig.current() == V2.version
    assert rig.fleet.rejection(V2.version) is not None
    assert rig.registry.get_sample_value("xds_rollbacks_total") == 0


def test_a_rejection_of_a_version_no_longer_served_changes_nothing_served() -> None:
    rig = Rig(V1, V3, V2)  # the operator fixed it before the NACK arrived
    rig.proxy("edge-a", V1)
    rig.nack("edge-a", V3)
    assert rig.current() == V2.version
    assert rig.told == []
    assert [r.version for r in rig.fleet.report()] == [V3.version]


def test_every_proxy_rejecting_the_same_version_rolls_back_once() -> None:
    rig = Rig(V1, V2, V3)
    rig.proxy("edge-a", V1, V2)
    rig.proxy("edge-b", V1, V2)
    rig.nack("edge-a", V3)
    rig.nack("edge-b", V3)
    assert rig.current() == V2.version
    assert len(rig.told) == 1
    assert rig.registry.get_sample_value("xds_rollbacks_total") == 1


def test_a_proxy_that_disconnected_no_longer_holds_the_fleet_back() -> None:
    rig = Rig(V1, V2, V3)
    rig.proxy("edge-a", V1, V2)
    slow = rig.proxy("slow", V1)
    rig.fleet.closed(StreamEvent(slow, "sotw", "slow"))
    rig.nack("edge-a", V3)
    assert rig.current() == V2.version


def test_the_history_bounds_derive_from_the_snapshots_kept() -> None:
    bounds = Bounds(snapshots=3)
    assert (bounds.snapshots, bounds.acked, bounds.versions) == (3, 3, 24)
