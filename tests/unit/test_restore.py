"""After a NACK a stream puts back what Envoy had of that type (Envoy applies what passed of a
rejected response), in SotW and Delta; without a copy of it, the status says the proxy may run
part of the rejected version."""

from __future__ import annotations

import logging

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from tests.support.snapshots import FakeSource, snap
from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.delta import DeltaStream
from xds_server.fleet import Fleet
from xds_server.metrics import XdsMetrics
from xds_server.observers import Ack, MetricsObserver, Nack, StreamEvent
from xds_server.proxies import ProxyRegistry, state_of
from xds_server.restore import NoHistory
from xds_server.snapshot import Resource, Snapshot
from xds_server.sotw import SotwStream
from xds_server.status import State
from xds_server.wire import Wire

CDS, EDS, LDS, RDS = typeurls.CLUSTER, typeurls.ENDPOINT, typeurls.LISTENER, typeurls.ROUTE

OLD = snap("a", "b")
NEW = snap("a", "b", edits={"a": {"timeout_ms": 5000}})  # a changed: the route configuration
NEWER = snap("a", "b", edits={"a": {"timeout_ms": 7000}})
BIGGER = snap("a", "b", "c")  # c added: clusters, endpoints, routes


class Kept:
    """A history of the snapshots given."""

    def __init__(self, *snapshots: Snapshot) -> None:
        self.snapshots = snapshots

    def with_type_version(self, type_url: str, version: str) -> Snapshot | None:
        return next((s for s in self.snapshots if s.versions.get(type_url) == version), None)

    def resource(self, type_url: str, name: str, version: str) -> Resource | None:
        for s in self.snapshots:
            found = s.resources.get(type_url, {}).get(name)
            if found is not None and found.version == version:
                return found
        return None


def sotw_req(
    type_url: str,
    names: tuple[str, ...] = (),
    *,
    nonce: str = "",
    version: str = "",
    error: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    out = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    out.node.CopyFrom(base_pb2.Node(id="edge-1", user_agent_name="envoy"))
    if error is not None:
        out.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return out


class Sotw:
    def __init__(self, history: Kept | NoHistory) -> None:
        self.source = FakeSource(OLD)
        self.registry = ProxyRegistry()
        self.status = self.registry.open()
        self.stream = SotwStream(
            self.source,
            self.status,
            MetricsObserver(XdsMetrics(CollectorRegistry())),
            Wire(),
            history=history,
        )

    def ask(self, r: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        return [discovery_pb2.DiscoveryResponse.FromString(b) for b in self.stream.on_request(r)]

    def push(self, s: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        self.source.snapshot = s
        return [discovery_pb2.DiscoveryResponse.FromString(b) for b in self.stream.on_snapshot()]

    def ack(self, resp: discovery_pb2.DiscoveryResponse) -> list[discovery_pb2.DiscoveryResponse]:
        names = {EDS: ("a", "b"), RDS: ("ingress_routes",)}.get(resp.type_url, ())
        return self.ask(sotw_req(resp.type_url, names, nonce=resp.nonce, version=resp.version_info))

    def synced(self) -> None:
        for type_url, names in (
            (CDS, ()),
            (EDS, ("a", "b")),
            (LDS, ()),
            (RDS, ("ingress_routes",)),
        ):
            (resp,) = self.ask(sotw_req(type_url, names))
            self.ack(resp)

    def state(self, type_url: str) -> State:
        current = self.source.snapshot
        assert current is not None
        return state_of(self.status.of(type_url), current.versions[type_url])


def test_sotw_puts_back_what_envoy_had_after_a_nack() -> None:
    h = Sotw(Kept(OLD))
    h.synced()
    (rds,) = h.push(NEW)
    # Envoy applied what passed, rejected the rest, and keeps saying it has OLD's version.
    (back,) = h.ask(
        sotw_req(RDS, ("ingress_routes",), nonce=rds.nonce, version=OLD.versions[RDS], error="bad")
    )
    assert back.version_info == OLD.versions[RDS]
    assert [r.value for r in back.resources] == [
        r.packed.value for r in OLD.resources[RDS].values()
    ]
    assert h.ack(back) == []  # nothing more: the rejected version is not sent again
    st = h.status.of(RDS)
    # What it runs: OLD's routes, and NEW's stands rejected.
    assert (st.acked_version, st.nacked_version, st.partial) == (
        OLD.versions[RDS],
        NEW.versions[RDS],
        False,
    )
    assert h.state(RDS) is State.NACKED
    # The next version is sent, and its ACK clears the NACK.
    (rds,) = h.push(NEWER)
    assert rds.version_info == NEWER.versions[RDS]
    h.ack(rds)
    assert (st.acked_version, st.nacked_version) == (NEWER.versions[RDS], None)


def test_sotw_dependents_wait_while_a_rejected_type_is_put_back() -> None:
    h = Sotw(Kept(OLD))
    h.synced()
    cds, eds = h.push(BIGGER)
    h.ack(eds)
    # OLD's two clusters are put back, and the endpoints owed after clusters follow.
    back, eds = h.ask(sotw_req(CDS, nonce=cds.nonce, version=OLD.versions[CDS], error="bad"))
    assert (back.version_info, len(back.resources), eds.type_url) == (OLD.versions[CDS], 2, EDS)
    # Routes that name the rejected cluster c are not sent, nor are the clusters again.
    assert h.ack(back) == [] and h.ack(eds) == []
    assert h.push(BIGGER) == []
    assert h.status.of(CDS).acked_version == OLD.versions[CDS]


def test_sotw_without_a_copy_says_the_proxy_may_run_part_of_the_rejected_version() -> None:
    h = Sotw(NoHistory())
    h.synced()
    (rds,) = h.push(NEW)
    nack = sotw_req(
        RDS, ("ingress_routes",), nonce=rds.nonce, version=OLD.versions[RDS], error="bad"
    )
    assert h.ask(nack) == []
    (report,) = h.registry.report(h.source.snapshot)
    assert report.types["routes"].partial
    assert report.types["routes"].to_json()["partially_applied"] is True
    (rds,) = h.push(NEWER)
    h.ack(rds)
    assert not h.status.of(RDS).partial


def delta_req(
    type_url: str,
    subscribe: tuple[str, ...] = (),
    *,
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    out = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    out.node.CopyFrom(base_pb2.Node(id="edge-1", user_agent_name="envoy"))
    if error is not None:
        out.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return out


def test_delta_puts_back_what_envoy_had_and_removes_what_it_did_not_have() -> None:
    source = FakeSource(OLD)
    status = ProxyRegistry().open("delta")
    stream = DeltaStream(
        source, status, MetricsObserver(XdsMetrics(CollectorRegistry())), Wire(), history=Kept(OLD)
    )

    def ask(r: discovery_pb2.DeltaDiscoveryRequest) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        return [discovery_pb2.DeltaDiscoveryResponse.FromString(b) for b in stream.on_request(r)]

    (cds,) = ask(delta_req(CDS))
    ask(delta_req(CDS, nonce=cds.nonce))
    changed = snap("a", "c", edits={"a": {"connect_timeout_ms": 2000}})  # a changed, b → c
    source.snapshot = changed
    (cds,) = [discovery_pb2.DeltaDiscoveryResponse.FromString(b) for b in stream.on_snapshot()]
    assert sorted(r.name for r in cds.resources) == ["a", "c"] and cds.removed_resources == ["b"]
    (back,) = ask(delta_req(CDS, nonce=cds.nonce, error="bad c"))
    assert {r.name: r.version for r in back.resources} == {
        "a": OLD.resources[CDS]["a"].version,
        "b": OLD.resources[CDS]["b"].version,
    }
    assert list(back.removed_resources) == ["c"]
    assert ask(delta_req(CDS, nonce=back.nonce)) == []
    st = status.of(CDS)
    assert (st.acked_version, st.nacked_version) == (OLD.versions[CDS], changed.versions[CDS])


def test_delta_after_a_reconnect_puts_back_what_envoy_reports_having() -> None:
    # A restarted server serves NEWER; Envoy reports OLD's resources; the history has OLD.
    source = FakeSource(BIGGER)
    status = ProxyRegistry().open("delta")
    stream = DeltaStream(
        source, status, MetricsObserver(XdsMetrics(CollectorRegistry())), Wire(), history=Kept(OLD)
    )
    initial = {n: r.version for n, r in OLD.resources[CDS].items()}
    (cds,) = [
        discovery_pb2.DeltaDiscoveryResponse.FromString(b)
        for b in stream.on_request(delta_req(CDS, initial=initial))
    ]
    assert [r.name for r in cds.resources] == ["c"]
    (back,) = [
        discovery_pb2.DeltaDiscoveryResponse.FromString(b)
        for b in stream.on_request(delta_req(CDS, nonce=cds.nonce, error="bad c"))
    ]
    assert (list(back.resources), list(back.removed_resources)) == ([], ["c"])
    assert not status.of(CDS).partial


def test_a_reconnecting_envoy_says_what_it_runs_and_a_nack_puts_that_back() -> None:
    # A restarted server serves NEW; the Envoy runs OLD (it says so) and rejects NEW's routes.
    h = Sotw(Kept(OLD))
    h.source.snapshot = NEW
    (cds,) = h.ask(sotw_req(CDS, version=OLD.versions[CDS]))
    assert h.status.of(CDS).acked_version == OLD.versions[CDS]
    h.ack(cds)
    (eds,) = h.ask(sotw_req(EDS, ("a", "b"), version=OLD.versions[EDS]))
    h.ack(eds)
    (lds,) = h.ask(sotw_req(LDS, version=OLD.versions[LDS]))
    h.ack(lds)
    (rds,) = h.ask(sotw_req(RDS, ("ingress_routes",), version=OLD.versions[RDS]))
    assert h.status.of(RDS).acked_version == OLD.versions[RDS]
    nack = sotw_req(
        RDS, ("ingress_routes",), nonce=rds.nonce, version=OLD.versions[RDS], error="bad"
    )
    (back,) = h.ask(nack)
    assert back.version_info == OLD.versions[RDS]


def test_a_reported_version_counts_for_the_fleet_but_proves_nothing() -> None:
    cache = SnapshotCache()
    cache.set(NEW)
    fleet = Fleet(
        cache,
        XdsMetrics(CollectorRegistry()),
        logging.getLogger("test"),
        rollback=True,
        unauthenticated_veto=True,
    )
    fleet.connected(StreamEvent(1, "sotw", "edge-1", user_agent="envoy"))
    for type_url, version in OLD.versions.items():
        fleet.acked(Ack(1, "edge-1", type_url, version, reported=True))
    # Not proven by a reported version: its NACK vetoes nothing.
    fleet.nacked(Nack("edge-1", RDS, NEW.versions[RDS], NEW.version, "bad", stream_id=1))
    assert fleet.rejection(NEW.version) is None


def test_what_waits_on_a_rejected_type_goes_on_once_that_version_is_no_longer_served() -> None:
    h = Sotw(Kept(OLD))
    h.synced()
    cds, eds = h.push(BIGGER)
    h.ack(eds)
    back, eds = h.ask(sotw_req(CDS, nonce=cds.nonce, version=OLD.versions[CDS], error="bad"))
    h.ack(back)
    h.ack(eds)
    # The fleet rolls back to OLD: the proxy has its clusters back already, not its endpoints.
    (eds,) = h.push(OLD)
    assert eds.type_url == EDS
    h.ack(eds)
    # An edit of routes only (clusters as OLD's) reaches it: nothing waits on BIGGER's clusters.
    (rds,) = h.push(NEW)
    assert (rds.type_url, rds.version_info) == (RDS, NEW.versions[RDS])


def test_a_client_that_rejects_what_is_put_back_is_not_sent_it_again() -> None:
    source = FakeSource(OLD)
    status = ProxyRegistry().open("delta")
    stream = DeltaStream(
        source, status, MetricsObserver(XdsMetrics(CollectorRegistry())), Wire(), history=Kept(OLD)
    )

    def ask(r: discovery_pb2.DeltaDiscoveryRequest) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        return [discovery_pb2.DeltaDiscoveryResponse.FromString(b) for b in stream.on_request(r)]

    (cds,) = ask(delta_req(CDS))
    ask(delta_req(CDS, nonce=cds.nonce))
    source.snapshot = BIGGER
    (cds,) = [discovery_pb2.DeltaDiscoveryResponse.FromString(b) for b in stream.on_snapshot()]
    (back,) = ask(delta_req(CDS, nonce=cds.nonce, error="bad"))
    # A client that rejects what it had before too: no loop, and its status says so.
    assert ask(delta_req(CDS, nonce=back.nonce, error="bad")) == []
    assert status.of(CDS).partial
    assert [discovery_pb2.DeltaDiscoveryResponse.FromString(b) for b in stream.on_snapshot()] == []
