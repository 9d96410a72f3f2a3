"""The Delta stream's decisions: subscriptions and wildcard, per-resource versions, removals,
re-connects with `initial_resource_versions`, ACK/NACK and the rules shared with SotW."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tests.support.snapshots import FakeSource, snap
from xds_server import typeurls
from xds_server.delta import DeltaStream, Subscription
from xds_server.metrics import XdsMetrics
from xds_server.observers import MetricsObserver, Nack, Observer, Observers
from xds_server.proxies import ProxyRegistry, ProxyStatus, state_of
from xds_server.snapshot import Resource, Snapshot
from xds_server.stream_state import SPARE_NAMES, Refused
from xds_server.wire import Wire

CDS, EDS, LDS, RDS = typeurls.CLUSTER, typeurls.ENDPOINT, typeurls.LISTENER, typeurls.ROUTE


def req(
    type_url: str,
    subscribe: Iterable[str] = (),
    unsubscribe: Iterable[str] = (),
    *,
    nonce: str = "",
    error: str | None = None,
    node: str | None = None,
    initial: Mapping[str, str] | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    out = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=dict(initial or {}),
    )
    if error is not None:
        out.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node is not None:
        out.node.CopyFrom(base_pb2.Node(id=node, cluster="edge"))
    return out


def parsed(sent: list[bytes]) -> list[discovery_pb2.DeltaDiscoveryResponse]:
    """Responses as Envoy reads them (streams send them serialized)."""
    return [discovery_pb2.DeltaDiscoveryResponse.FromString(b) for b in sent]


class Harness:
    def __init__(self, snapshot: Snapshot | None) -> None:
        self.source = FakeSource(snapshot)
        self.registry = ProxyRegistry()
        self.status: ProxyStatus = self.registry.open("delta")
        self.nacks: list[Nack] = []
        nacks = self.nacks

        class NackRecorder(Observer):
            def nacked(self, event: Nack) -> None:
                nacks.append(event)

        self.stream = DeltaStream(
            self.source,
            self.status,
            Observers(MetricsObserver(XdsMetrics(CollectorRegistry())), NackRecorder()),
            Wire(),
        )

    @property
    def snapshot(self) -> Snapshot:
        assert self.source.snapshot is not None
        return self.source.snapshot

    def ask(
        self, r: discovery_pb2.DeltaDiscoveryRequest
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        return parsed(self.stream.on_request(r))

    def changed(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """What the stream sends after the snapshot changed."""
        return parsed(self.stream.on_snapshot())

    def push(self, snapshot: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        self.source.snapshot = snapshot
        return self.changed()

    def ack(
        self, resp: discovery_pb2.DeltaDiscoveryResponse
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        return self.ask(req(resp.type_url, nonce=resp.nonce))

    def synced(self, *eds_names: str) -> None:
        """Every type subscribed and ACKed at the current snapshot, as Envoy starts."""
        (cds,) = self.ask(req(CDS, node="edge-1"))
        (eds,) = self.ask(req(EDS, eds_names))
        self.ack(cds)
        self.ack(eds)
        (lds,) = self.ask(req(LDS))
        (rds,) = self.ask(req(RDS, ["ingress_routes"]))
        self.ack(lds)
        self.ack(rds)


def names(resp: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in resp.resources]


def test_a_wildcard_request_gets_every_cluster_with_its_own_version() -> None:
    h = Harness(snap("a", "b"))
    (resp,) = h.ask(req(CDS, node="edge-1"))
    assert names(resp) == ["a", "b"]
    clusters = h.snapshot.resources[CDS]
    assert {r.name: r.version for r in resp.resources} == {
        n: r.version for n, r in clusters.items()
    }
    assert resp.resources[0].resource == clusters["a"].packed
    assert resp.system_version_info == h.snapshot.versions[CDS]
    assert resp.removed_resources == []
    assert h.status.node_id == "edge-1"
    assert h.status.protocol == "delta"


def test_the_first_wildcard_answer_is_sent_even_when_empty() -> None:
    # Envoy finishes initializing only once each wildcard type has had an answer.
    h = Harness(snap())
    (resp,) = h.ask(req(CDS))
    assert (list(resp.resources), list(resp.removed_resources)) == ([], [])
    assert resp.system_version_info == h.snapshot.versions[CDS]


def test_nothing_is_sent_before_a_valid_catalog() -> None:
    h = Harness(None)
    assert h.ask(req(CDS)) == []
    (resp,) = h.push(snap("a"))
    assert names(resp) == ["a"]


def test_a_one_service_edit_sends_only_that_cluster_and_its_endpoints() -> None:
    h = Harness(snap("a", "b", "c"))
    h.synced("a", "b", "c")
    before = h.snapshot
    cds, eds = h.push(snap("a", "b", "c", edits={"b": {"connect_timeout_ms": 2500}}))
    assert (names(cds), list(cds.removed_resources)) == (["b"], [])
    # Envoy warms an updated cluster until its endpoints arrive: b's come again, unchanged.
    assert names(eds) == ["b"]
    assert eds.resources[0].version == before.resources[EDS]["b"].version
    assert h.snapshot.versions[EDS] == before.versions[EDS]
    # Listeners and routes did not change: nothing is sent for them, now or after the ACKs.
    assert h.ack(cds) == []
    assert h.ack(eds) == []


def test_an_added_service_sends_one_cluster_and_a_removed_one_its_removal() -> None:
    h = Harness(snap("a", "b"))
    h.synced("a", "b")
    cds, eds = h.push(snap("a", "b", "c"))
    assert (names(cds), list(cds.removed_resources)) == (["c"], [])
    # Envoy has not asked for c's endpoints yet: the endpoints' version moves, nothing more.
    assert (names(eds), eds.system_version_info) == ([], h.snapshot.versions[EDS])
    h.ack(cds)
    (more,) = h.ask(req(EDS, ["c"], nonce=eds.nonce))  # Envoy asks, ACKing the first
    assert names(more) == ["c"]
    (rds,) = h.ack(more)
    assert rds.type_url == RDS and names(rds) == ["ingress_routes"]
    h.ack(rds)

    responses = h.push(snap("a", "c"))
    cds = responses[0]
    assert (names(cds), list(cds.removed_resources)) == ([], ["b"])


def test_endpoints_are_sent_by_the_names_subscribed() -> None:
    h = Harness(snap("a", "b", "c"))
    (eds,) = h.ask(req(EDS, ["b"]))
    assert names(eds) == ["b"]
    assert h.ack(eds) == []
    (more,) = h.ask(req(EDS, ["a", "c"]))
    assert names(more) == ["a", "c"]  # only what is new to the client
    assert h.ack(more) == []
    # Unsubscribing needs no answer; subscribing again sends the resource again.
    assert h.ask(req(EDS, unsubscribe=["a"])) == []
    (again,) = h.ask(req(EDS, ["a"]))
    assert names(again) == ["a"]


def test_a_subscribed_name_that_does_not_exist_is_answered_as_removed() -> None:
    h = Harness(snap("a"))
    (eds,) = h.ask(req(EDS, ["a", "ghost"]))
    assert names(eds) == ["a"]
    assert list(eds.removed_resources) == ["ghost"]
    h.ack(eds)
    # ... once: it is not repeated with the next change.
    cds, eds = h.ask(req(CDS))
    h.ack(cds)
    h.ack(eds)
    assert [list(r.removed_resources) for r in h.push(snap("a", "b"))] == [[], []]


def test_a_reconnected_envoy_is_sent_only_what_it_does_not_have() -> None:
    h = Harness(snap("a", "b", "c"))
    clusters = h.snapshot.resources[CDS]
    has = {"a": clusters["a"].version, "b": "an-old-version", "gone": "v1"}
    (resp,) = h.ask(req(CDS, node="edge-1", initial=has))
    assert names(resp) == ["b", "c"]
    assert list(resp.removed_resources) == ["gone"]


def test_a_reconnect_with_everything_current_sends_nothing_but_the_version() -> None:
    # Versions are content hashes: a restarted server knows Envoy's resources are current.
    h = Harness(snap("a", "b"))
    has = {n: r.version for n, r in h.snapshot.resources[CDS].items()}
    (resp,) = h.ask(req(CDS, initial=has))
    assert (list(resp.resources), list(resp.removed_resources)) == ([], [])
    h.ack(resp)
    assert state_of(h.status.of(CDS), h.snapshot.versions[CDS]) == "SYNCED"


def test_an_ack_records_the_version_and_triggers_no_resend() -> None:
    h = Harness(snap("a"))
    (resp,) = h.ask(req(CDS))
    assert h.ack(resp) == []
    assert h.status.of(CDS).acked_version == h.snapshot.versions[CDS]
    assert h.changed() == []


def test_a_nacked_resource_is_not_resent_until_the_type_changes_again() -> None:
    h = Harness(snap("a"))
    h.synced("a")
    cds, _ = h.push(snap("a", "b"))
    # What Envoy applied of it is put back: b, which it did not have, removed.
    (restore,) = h.ask(req(CDS, nonce=cds.nonce, error="bad cluster b"))
    assert (names(restore), list(restore.removed_resources)) == ([], ["b"])
    st = h.status.of(CDS)
    assert (st.nacked_version, st.error) == (h.snapshot.versions[CDS], "bad cluster b")
    (nack,) = h.nacks
    assert (nack.type_url, nack.snapshot_version, nack.node_id) == (
        CDS,
        h.snapshot.version,
        "edge-1",
    )
    assert h.changed() == []
    h.ack(restore)
    assert st.nacked_version == h.snapshot.versions[CDS]  # the ACK of the restore leaves it
    assert h.changed() == []
    # The next change of clusters offers b again with it: Envoy's answer covers both.
    cds, _ = h.push(snap("a", "b", "c"))
    assert names(cds) == ["b", "c"]
    h.ack(cds)
    assert st.nacked_version is None and st.acked_version == h.snapshot.versions[CDS]


def test_a_stale_answer_is_ignored_but_its_subscriptions_count() -> None:
    h = Harness(snap("a", "b", "c"))
    (first,) = h.ask(req(EDS, ["a"]))
    h.ask(req(EDS, ["b"]))
    # A NACK of the first response after the second was sent: stale, not recorded...
    assert h.ask(req(EDS, nonce=first.nonce, error="late")) == []
    assert h.status.of(EDS).nacked_version is None and h.nacks == []
    # ... while what a stale request subscribes to is sent.
    (third,) = h.ask(req(EDS, ["c"], nonce=first.nonce))
    assert names(third) == ["c"]
    h.ack(third)
    assert h.status.of(EDS).acked_version == h.snapshot.versions[EDS]


def test_a_star_subscription_is_a_wildcard_until_unsubscribed() -> None:
    h = Harness(snap("a", "b", "c"))
    (resp,) = h.ask(req(CDS, ["a", "*"]))
    assert names(resp) == ["a", "b", "c"]
    h.ack(resp)
    # Leaving wildcard keeps the names subscribed explicitly; the others are dropped by
    # Envoy and by us: a later change of b is not sent.
    assert h.ask(req(CDS, unsubscribe=["*"])) == []
    responses = h.push(snap("a", "b", "c", edits={"b": {"connect_timeout_ms": 2500}}))
    assert [names(r) for r in responses if r.type_url == CDS] == [[]]


def test_a_name_unsubscribed_under_wildcard_is_sent_again() -> None:
    # Envoy keeps such a resource "ambiguous" until the server says whether wildcard covers it.
    h = Harness(snap("a", "b"))
    (resp,) = h.ask(req(CDS))
    h.ack(resp)
    assert h.ask(req(CDS, ["a"])) == []  # Envoy already has it through wildcard
    (again,) = h.ask(req(CDS, unsubscribe=["a"]))
    assert names(again) == ["a"]


def test_routes_wait_for_clusters_in_flight() -> None:
    h = Harness(snap("a"))
    h.synced("a")
    sent = h.push(snap("a", "b"))
    assert [r.type_url for r in sent] == [CDS, EDS]  # routes wait for the new cluster
    cds, eds = sent
    assert h.ack(cds) == []  # endpoints still in flight
    (rds,) = h.ack(eds)
    assert rds.type_url == RDS


def test_routes_wait_while_clusters_are_nacked() -> None:
    h = Harness(snap("a"))
    h.synced("a")
    cds, eds = h.push(snap("a", "b"))
    h.ack(eds)
    (restore,) = h.ask(req(CDS, nonce=cds.nonce, error="bad cluster"))
    assert h.changed() == []
    h.ack(restore)
    assert h.changed() == []  # clusters still rejected: routes wait
    cds, eds = h.push(snap("a", "c"))
    assert (names(cds), list(cds.removed_resources)) == (["c"], [])
    assert h.ack(cds) == []
    assert [r.type_url for r in h.ack(eds)] == [RDS]


def test_a_stream_that_subscribes_to_too_many_names_is_refused() -> None:
    h = Harness(snap("a", "b"))
    # Envoy's own subscriptions (every endpoint, some not there yet) stay well below the limit.
    h.ask(req(EDS, ["a", "b", *(f"soon-{i}" for i in range(SPARE_NAMES))]))
    with pytest.raises(Refused) as refused:
        h.ask(req(EDS, ["x", "y", "one-too-many"]))
    assert refused.value.reason == "too_many_names"
    assert f"at most {2 * 2 + SPARE_NAMES}" in str(refused.value)


def test_an_unknown_type_is_ignored() -> None:
    h = Harness(snap("a"))
    assert h.ask(req("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")) == []


def full_diff_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(
        self: Subscription, base: Snapshot, snapshot: Snapshot, type_url: str, owed: set[str]
    ) -> tuple[list[Resource], list[str]]:
        return self.diff(snapshot.resources.get(type_url, {}), owed)

    monkeypatch.setattr(Subscription, "diff_since", full)


def summary(resps: list[discovery_pb2.DeltaDiscoveryResponse]) -> list[tuple[object, ...]]:
    return [
        (
            r.type_url,
            r.system_version_info,
            [(x.name, x.version) for x in r.resources],
            list(r.removed_resources),
        )
        for r in resps
    ]


SERVICES = ["a", "b", "c", "d"]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    names = draw(st.lists(st.sampled_from(SERVICES), unique=True, max_size=4))
    edits = {n: {"connect_timeout_ms": draw(st.integers(1, 3))} for n in names}
    return snap(*names, timeout_ms=draw(st.integers(1, 2)), edits=edits)


steps = st.one_of(
    st.tuples(st.just("snapshot"), snapshots()),
    st.tuples(st.sampled_from(["ack", "nack"]), st.sampled_from([CDS, EDS])),
    st.tuples(st.sampled_from(["subscribe", "unsubscribe"]), st.sampled_from(SERVICES)),
)


def replay(first: Snapshot, script: list[tuple[str, Any]]) -> list[tuple[object, ...]]:
    h = Harness(first)
    out = summary(h.ask(req(CDS, node="n")) + h.ask(req(EDS, ["a", "b"])))
    for step, arg in script:
        if step == "snapshot":
            out += summary(h.push(arg))
        elif step in ("ack", "nack"):
            nonce = h.stream._state.of(arg).nonce
            out += summary(h.ask(req(arg, nonce=nonce, error="bad" if step == "nack" else None)))
        elif step == "subscribe":
            out += summary(h.ask(req(EDS, [arg])))
        else:
            out += summary(h.ask(req(EDS, unsubscribe=[arg])))
    return out


@settings(max_examples=80, deadline=None)
@given(snapshots(), st.lists(steps, max_size=12))
def test_diffs_from_the_last_snapshot_equal_full_diffs(
    first: Snapshot, script: list[tuple[str, Any]]
) -> None:
    incremental = replay(first, script)
    with pytest.MonkeyPatch.context() as patch:
        full_diff_only(patch)
        assert replay(first, script) == incremental
