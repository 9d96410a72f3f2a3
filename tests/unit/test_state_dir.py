"""The state directory: what proxies accepted and rejected outlives the server and is shared by
the replicas given the same directory."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.support.snapshots import snap
from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.fleet import Fleet
from xds_server.metrics import XdsMetrics
from xds_server.observers import Ack, Nack, StreamEvent
from xds_server.reload import Reloader
from xds_server.snapshot import Snapshot
from xds_server.state_dir import StateDir, decode, default_path, encode

V1 = snap("a")
V2 = snap("a", "b")  # the version Envoy rejects
LOG = logging.getLogger("test")


def fleet(path: Path, cache: SnapshotCache | None = None) -> Fleet:
    return Fleet(
        cache or SnapshotCache(),
        XdsMetrics(CollectorRegistry()),
        LOG,
        rollback=True,
        unauthenticated_veto=True,
        store=StateDir(path, LOG),
    )


def accept_then_reject(path: Path) -> Fleet:
    """A server that served V1 (ACKed whole) then V2 (NACKed by the proxy)."""
    cache = SnapshotCache()
    f = fleet(path, cache)
    f.connected(StreamEvent(1, "sotw", "edge-1", user_agent="envoy"))
    cache.set(V1)
    for type_url, version in V1.versions.items():
        f.acked(Ack(1, "edge-1", type_url, version))
    cache.set(V2)
    cds = typeurls.CLUSTER
    f.nacked(Nack("edge-1", cds, V2.versions[cds], V2.version, "boom", stream_id=1))
    return f


def test_a_snapshot_survives_encoding() -> None:
    assert decode(encode(V2)) == V2


def test_a_restarted_server_knows_the_rejection_and_what_was_accepted(tmp_path: Path) -> None:
    accept_then_reject(tmp_path)
    again = fleet(tmp_path)  # a restart, or another replica
    assert again.rejection(V2.version) is not None
    fallback = again.fallback()
    assert fallback is not None and fallback.version == V1.version
    assert [r.version for r in again.report()] == [V2.version]
    kept = again.with_type_version(typeurls.CLUSTER, V1.versions[typeurls.CLUSTER])
    assert kept is not None and kept.version == V1.version


def test_a_replica_sees_a_rejection_recorded_after_it_started(tmp_path: Path) -> None:
    replica = fleet(tmp_path)
    accept_then_reject(tmp_path)
    assert replica.rejection(V2.version) is not None
    assert replica.resource(typeurls.CLUSTER, "a", V1.resources[typeurls.CLUSTER]["a"].version)


def test_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    accept_then_reject(tmp_path)
    (kept,) = (tmp_path / "accepted").iterdir()
    kept.write_bytes(kept.read_bytes()[:-3])
    assert StateDir(tmp_path, LOG).accepted_snapshots() == []


def test_at_start_a_rejected_catalog_serves_the_last_accepted_version(tmp_path: Path) -> None:
    accept_then_reject(tmp_path / "state")
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{}")
    cache = SnapshotCache()
    f = fleet(tmp_path / "state", cache)
    loaded: list[Snapshot] = []

    def build(raw: bytes, source: str) -> tuple[Snapshot, int]:
        return V2, 2  # the catalog on disk is still the rejected version

    reloader = Reloader(
        catalog,
        build,
        cache,
        f,
        XdsMetrics(CollectorRegistry()),
        LOG,
        loaded.append,
        fallback=f.fallback,
    )
    assert asyncio.run(reloader.load()) is False
    current = cache.current()
    assert current is not None and current.version == V1.version
    assert loaded == [current]
    assert not reloader.state.ok and "was rejected by Envoy" in reloader.state.problems[0]


def test_the_default_is_per_catalog_under_the_users_state_directory() -> None:
    env = {"HOME": "/home/u"}
    a = default_path(Path("/etc/sidecar/catalog.json"), env)
    assert a.parent == Path("/home/u/.local/state/sidecar")
    assert a != default_path(Path("/srv/other.json"), env)
    assert default_path(Path("/x.json"), {"XDG_STATE_HOME": "/s"}).parent == Path("/s/sidecar")


def test_on_an_event_loop_a_snapshot_is_kept_by_a_worker_thread(tmp_path: Path) -> None:
    store = StateDir(tmp_path, LOG)

    async def keep() -> None:
        store.accepted_soon(V1)

    asyncio.run(keep())  # (joins the loop's executor)
    (kept,) = store.accepted_snapshots()
    assert kept.version == V1.version
