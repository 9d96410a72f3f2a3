"""The SotW stream's decisions: ACK, NACK, stale nonces, push order, subscriptions."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from tests.support.snapshots import FakeSource, snap
from xds_server import typeurls
from xds_server.metrics import ProxyStates, XdsMetrics
from xds_server.observers import MetricsObserver
from xds_server.proxies import ProxyRegistry, ProxyStatus, state_of
from xds_server.snapshot import Snapshot
from xds_server.sotw import SotwStream
from xds_server.wire import Wire

CDS, EDS, LDS, RDS = typeurls.CLUSTER, typeurls.ENDPOINT, typeurls.LISTENER, typeurls.ROUTE


def req(
    type_url: str,
    names: tuple[str, ...] = (),
    *,
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    node: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    out = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error is not None:
        out.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node is not None:
        out.node.CopyFrom(base_pb2.Node(id=node, cluster="edge"))
    return out


def parsed(sent: list[bytes]) -> list[discovery_pb2.DiscoveryResponse]:
    """Responses as Envoy reads them (streams send them serialized)."""
    return [discovery_pb2.DiscoveryResponse.FromString(b) for b in sent]


class Harness:
    def __init__(self, snapshot: Snapshot | None) -> None:
        self.source = FakeSource(snapshot)
        self.registry = ProxyRegistry()
        self.status: ProxyStatus = self.registry.open()
        self.metrics = CollectorRegistry()
        self.stream = SotwStream(
            self.source, self.status, MetricsObserver(XdsMetrics(self.metrics)), Wire()
        )

    def ask(self, r: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        return parsed(self.stream.on_request(r))

    def changed(self) -> list[discovery_pb2.DiscoveryResponse]:
        """What the stream sends after the snapshot changed."""
        return parsed(self.stream.on_snapshot())

    def ack(self, resp: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> Any:
        return self.ask(req(resp.type_url, names, nonce=resp.nonce, version=resp.version_info))


def test_the_first_request_gets_every_cluster_and_records_the_node() -> None:
    h = Harness(snap("a", "b"))
    (resp,) = h.ask(req(CDS, node="edge-1"))
    assert resp.type_url == CDS
    assert len(resp.resources) == 2
    assert resp.version_info == h.source.snapshot.versions[CDS]  # type: ignore[union-attr]
    assert h.status.node_id == "edge-1"


def test_nothing_is_sent_before_a_valid_catalog() -> None:
    h = Harness(None)
    assert h.ask(req(CDS)) == []
    h.source.snapshot = snap("a")
    assert [r.type_url for r in h.changed()] == [CDS]


def test_endpoints_are_sent_only_for_the_names_subscribed() -> None:
    h = Harness(snap("a", "b", "c"))
    (resp,) = h.ask(req(EDS, ("b", "zzz")))
    assert len(resp.resources) == 1
    assert h.ack(resp, ("b", "zzz")) == []
    (resp,) = h.ask(req(EDS, ("a", "b"), nonce=resp.nonce, version=resp.version_info))
    assert len(resp.resources) == 2


def test_an_ack_is_recorded_and_triggers_no_resend() -> None:
    h = Harness(snap("a"))
    (resp,) = h.ask(req(CDS))
    assert h.ack(resp) == []
    assert h.status.of(CDS).acked_version == resp.version_info
    assert state_of(h.status.of(CDS), resp.version_info) == "SYNCED"


def test_a_nacked_version_is_recorded_and_never_resent() -> None:
    h = Harness(snap("a"))
    (resp,) = h.ask(req(CDS))
    h.ack(resp)
    h.source.snapshot = snap("a", "b")
    (bad,) = h.changed()
    again = h.ask(req(CDS, nonce=bad.nonce, version=resp.version_info, error="bad cluster"))
    assert again == []
    st = h.status.of(CDS)
    assert (st.nacked_version, st.error) == (bad.version_info, "bad cluster")
    assert state_of(st, bad.version_info) == "NACKED"
    # Envoy asks again with the old version: still nothing to send.
    assert h.ask(req(CDS, nonce=bad.nonce, version=resp.version_info)) == []
    # A different version is sent.
    h.source.snapshot = snap("a", "c")
    (fixed,) = h.changed()
    assert fixed.version_info not in (bad.version_info, resp.version_info)
    h.ack(fixed)
    assert st.nacked_version is None and st.acked_version == fixed.version_info


def test_an_error_answered_with_the_latest_version_is_an_ack_of_it() -> None:
    # Envoy got two responses before answering: the error is the first one's, the nonce and
    # the version it now has are the second one's.
    h = Harness(snap("a"))
    (first,) = h.ask(req(CDS))
    h.ack(first)
    h.source.snapshot = snap("a", "bad")
    assert len(h.changed()) == 1
    h.source.snapshot = snap("a")  # rolled back before Envoy answered
    (back,) = h.changed()
    assert back.version_info == first.version_info
    h.ask(req(CDS, nonce=back.nonce, version=back.version_info, error="bad cluster"))
    st = h.status.of(CDS)
    assert (st.acked_version, st.nacked_version) == (back.version_info, None)
    assert state_of(st, back.version_info) == "SYNCED"


def test_a_request_with_a_stale_nonce_is_ignored() -> None:
    h = Harness(snap("a"))
    (first,) = h.ask(req(CDS))
    h.source.snapshot = snap("a", "b")
    (second,) = h.changed()
    # Envoy NACKs the first response after the second was sent: stale, ignored.
    assert h.ask(req(CDS, nonce=first.nonce, error="late")) == []
    assert h.status.of(CDS).nacked_version is None
    h.ack(second)
    assert h.status.of(CDS).acked_version == second.version_info


def synced(h: Harness) -> None:
    """Bring the harness's stream to every type ACKed at the current snapshot."""
    (cds,) = h.ask(req(CDS))
    (eds,) = h.ask(req(EDS, ("a",)))
    h.ack(cds)
    h.ack(eds, ("a",))
    (lds,) = h.ask(req(LDS))
    (rds,) = h.ask(req(RDS, ("ingress_routes",)))
    h.ack(lds)
    h.ack(rds, ("ingress_routes",))


def test_routes_wait_for_clusters_in_flight() -> None:
    h = Harness(snap("a"))
    synced(h)
    h.source.snapshot = snap("a", "b")
    sent = h.changed()
    assert [r.type_url for r in sent] == [CDS, EDS]  # routes wait for the new cluster
    cds2, eds2 = sent
    assert h.ack(cds2) == []  # endpoints still in flight
    (rds2,) = h.ack(eds2, ("a",))
    assert rds2.type_url == RDS


def test_endpoints_are_sent_again_after_a_cluster_only_change() -> None:
    # Envoy warms an updated cluster until it gets that cluster's endpoints, changed or not.
    h = Harness(snap("a"))
    synced(h)
    before = h.source.snapshot
    h.source.snapshot = snap("a", connect_timeout_ms=2500)
    assert h.source.snapshot.versions[EDS] == before.versions[EDS]  # type: ignore[union-attr]
    cds, eds = h.changed()
    assert (cds.type_url, eds.type_url) == (CDS, EDS)
    assert len(eds.resources) == 1
    # Envoy's re-request for the warming cluster carries the nonce it had: stale, ignored.
    assert h.ask(req(EDS, ("a",), nonce=str(int(eds.nonce) - 2), version=eds.version_info)) == []
    assert h.ack(cds) == []
    assert h.ack(eds, ("a",)) == []  # the ACK of the resend triggers nothing more


def test_endpoints_owed_after_clusters_answer_envoys_next_request() -> None:
    # Endpoints not yet requested when clusters change: the first request gets them.
    h = Harness(snap("a"))
    (cds,) = h.ask(req(CDS))
    h.ack(cds)
    (eds,) = h.ask(req(EDS, ("a",)))
    assert eds.type_url == EDS


def test_routes_wait_while_clusters_are_nacked() -> None:
    h = Harness(snap("a"))
    synced(h)
    h.source.snapshot = snap("a", "b")
    cds, eds = h.changed()
    h.ack(eds, ("a",))
    # Envoy rejects the clusters: routes naming cluster b must not follow.
    assert h.ask(req(CDS, nonce=cds.nonce, version="old", error="bad cluster")) == []
    assert h.changed() == []
    # A fixed catalog: clusters go out; once ACKed, the routes follow.
    h.source.snapshot = snap("a", "c")
    cds2, eds2 = h.changed()
    assert (cds2.type_url, eds2.type_url) == (CDS, EDS)
    assert h.ack(cds2) == []  # endpoints still in flight
    sent = h.ack(eds2, ("a",))
    assert [r.type_url for r in sent] == [RDS]


def test_order_is_clusters_endpoints_listeners_routes() -> None:
    h = Harness(None)
    for t, names in ((RDS, ("ingress_routes",)), (LDS, ()), (EDS, ("a",)), (CDS, ())):
        h.ask(req(t, names))
    h.source.snapshot = snap("a")
    assert [r.type_url for r in h.changed()] == [CDS, EDS]


@pytest.mark.parametrize("names", [(), ("*",)])
def test_an_empty_or_star_cluster_request_is_a_wildcard(names: tuple[str, ...]) -> None:
    h = Harness(snap("a", "b"))
    (resp,) = h.ask(req(CDS, names))
    assert len(resp.resources) == 2


def test_an_unknown_type_is_ignored() -> None:
    h = Harness(snap("a"))
    assert h.ask(req("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")) == []


def test_the_registry_reports_each_proxy_state() -> None:
    h = Harness(snap("a"))
    (resp,) = h.ask(req(CDS, node="edge-1"))
    h.ack(resp)
    (report,) = h.registry.report(h.source.snapshot)
    assert report.node_id == "edge-1"
    assert report.types["clusters"].state == "SYNCED"
    h.registry.close(h.status)
    assert h.registry.report(h.source.snapshot) == ()


def test_the_registry_lists_refused_streams_until_the_node_connects() -> None:
    registry = ProxyRegistry()
    registry.refuse("edge-1", "ipv4:127.0.0.1:5", "no_node_id", now=10.0)
    again = registry.refuse("edge-1", "ipv4:127.0.0.1:6", "no_node_id", now=11.0)
    assert again.count == 2
    (listed,) = registry.refusals()
    assert listed.node_id == "edge-1" and listed.count == 2 and listed.last_at == 11.0
    registry.accepted("edge-1")
    assert registry.refusals() == ()


def test_push_to_ack_time_and_proxy_states_are_measured() -> None:
    h = Harness(snap("a"))
    h.metrics.register(ProxyStates(lambda: h.registry.states(h.source.snapshot)))
    (cds,) = h.ask(req(CDS, node="edge-1"))
    h.ack(cds)
    count = h.metrics.get_sample_value("xds_push_ack_seconds_count", {"type": "clusters"})
    assert count == 1
    assert h.metrics.get_sample_value("xds_proxies", {"state": "synced"}) == 1
    h.source.snapshot = snap("a", "b")
    (bad,) = h.changed()
    h.ask(req(CDS, nonce=bad.nonce, version=cds.version_info, error="no"))
    assert h.metrics.get_sample_value("xds_proxies", {"state": "nacked"}) == 1
    assert h.metrics.get_sample_value("xds_proxies", {"state": "synced"}) == 0
