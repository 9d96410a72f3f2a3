"""The `/status` document as types: its JSON is today's contract, `from_json` reads back what
`to_json` writes and names the path of what it cannot read, and states order by severity."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.snapshots import snap
from xds_server import typeurls
from xds_server.fleet import Rejection
from xds_server.proxies import ProxyRegistry
from xds_server.status import (
    CatalogStatus,
    Nacked,
    ProxyReport,
    RefusalReport,
    RejectionReport,
    State,
    StatusDocument,
    StatusFormatError,
    TypeReport,
    from_json,
)

CDS, LDS = typeurls.CLUSTER, typeurls.LISTENER


def proxy(node_id: str, *states: State) -> ProxyReport:
    types = {
        f"type{i}": TypeReport(s, "v0", "v1", Nacked("v1", "bad") if s is State.NACKED else None)
        for i, s in enumerate(states)
    }
    return ProxyReport(node_id, "edge", "sotw", 1.0, types)


def document(*proxies: ProxyReport, **changes: Any) -> StatusDocument:
    fields: dict[str, Any] = {
        "version": "v1",
        "fleet_acked_version": "v0",
        "versions": {CDS: "c1", LDS: "l1"},
        "catalog": CatalogStatus("/etc/catalog.json", True, (), 5.0),
        "proxies": proxies,
        "refused": (),
        "rollback_on_nack": True,
        "rejected": (),
        "time": 10.0,
    }
    return StatusDocument(**{**fields, **changes})


# The JSON `/status` answered before it had types, for one document with every kind of entry.
TODAYS_JSON: dict[str, Any] = {
    "version": "v1",
    "fleet_acked_version": "v0",
    "versions": {CDS: "c1", LDS: "l1"},
    "catalog": {
        "path": "/etc/catalog.json",
        "valid": False,
        "errors": ["services[0].timeout_ms: must be positive"],
        "checked_at": 5.0,
    },
    "proxies": [
        {
            "node_id": "edge-1",
            "node_cluster": "edge",
            "protocol": "delta",
            "connected_at": 1.5,
            "peer": "ipv4:127.0.0.1:7",
            "user_agent": "envoy",
            "authenticated": True,
            "types": {
                "clusters": {
                    "state": "NACKED",
                    "acked_version": "c0",
                    "current_version": "c1",
                    "nacked_version": "c1",
                    "error": "port taken",
                },
                "listeners": {"state": "SYNCED", "acked_version": "l1", "current_version": "l1"},
                "routes": {"state": "STALE", "acked_version": None, "current_version": None},
            },
        }
    ],
    "refused": [
        {
            "node_id": "",
            "peer": "ipv4:127.0.0.1:5",
            "reason": "no_node_id",
            "count": 2,
            "first_at": 3.0,
            "last_at": 4.0,
        }
    ],
    "rollback_on_nack": True,
    "rejected": [
        {
            "version": "v2",
            "node_id": "edge-1",
            "type": "clusters",
            "error": "port taken",
            "at": 6.0,
            "rolled_back_to": None,
        }
    ],
    "time": 10.0,
}

TODAYS_DOCUMENT = document(
    ProxyReport(
        "edge-1",
        "edge",
        "delta",
        1.5,
        {
            "clusters": TypeReport(State.NACKED, "c0", "c1", Nacked("c1", "port taken")),
            "listeners": TypeReport(State.SYNCED, "l1", "l1"),
            "routes": TypeReport(State.STALE, None, None),
        },
        "ipv4:127.0.0.1:7",
        "envoy",
        True,
    ),
    catalog=CatalogStatus(
        "/etc/catalog.json", False, ("services[0].timeout_ms: must be positive",), 5.0
    ),
    refused=(RefusalReport("", "ipv4:127.0.0.1:5", "no_node_id", 2, 3.0, 4.0),),
    rejected=(RejectionReport("v2", "edge-1", "clusters", "port taken", 6.0, None),),
)


def test_states_order_by_severity_not_by_their_names() -> None:
    assert State.SYNCED < State.STALE < State.NACKED
    assert sorted([State.NACKED, State.SYNCED, State.STALE]) == [
        State.SYNCED,
        State.STALE,
        State.NACKED,
    ]
    assert max(State.SYNCED, State.NACKED) is State.NACKED


def test_a_state_is_written_as_its_name() -> None:
    assert json.dumps([State.STALE]) == '["STALE"]'
    assert f"{State.NACKED:<7}|" == "NACKED |"


def test_the_worst_of_a_nacked_then_a_stale_proxy_is_nacked() -> None:
    # The old `sidecar status` kept the last state that was not SYNCED: STALE here.
    doc = document(proxy("edge-1", State.NACKED), proxy("edge-2", State.STALE))
    assert doc.state is State.NACKED
    assert State.worst([State.NACKED, State.STALE, State.SYNCED]) is State.NACKED


def test_the_worst_of_one_proxys_types_is_its_state() -> None:
    assert proxy("edge-1", State.STALE, State.NACKED, State.SYNCED).state is State.NACKED
    assert proxy("edge-1", State.SYNCED, State.STALE).state is State.STALE


def test_nothing_to_be_worse_is_synced() -> None:
    assert State.worst([]) is State.SYNCED
    assert document().state is State.SYNCED
    assert proxy("edge-1").state is State.SYNCED


def test_a_document_writes_the_json_status_has_always_answered() -> None:
    assert TODAYS_DOCUMENT.to_json() == TODAYS_JSON
    written = json.dumps(TODAYS_DOCUMENT.to_json(), indent=2)
    assert written == json.dumps(TODAYS_JSON, indent=2)  # the keys in the same order too


def test_a_document_reads_back_from_the_json_status_has_always_answered() -> None:
    assert from_json(TODAYS_JSON) == TODAYS_DOCUMENT


def test_a_proxy_without_peer_user_agent_or_authenticated_reads_as_unknown() -> None:
    older = json.loads(json.dumps(TODAYS_JSON))
    for key in ("peer", "user_agent", "authenticated"):
        del older["proxies"][0][key]
    (proxy,) = from_json(older).proxies
    assert (proxy.peer, proxy.user_agent, proxy.authenticated) == ("", "", False)
    assert proxy.types == TODAYS_DOCUMENT.proxies[0].types


def test_the_registry_reports_each_type_as_before() -> None:
    current = snap("a")
    clusters, listeners = current.versions[CDS], current.versions[LDS]
    registry = ProxyRegistry()
    status = registry.open("delta")
    status.node_id, status.node_cluster, status.connected_at = "edge-1", "edge", 1.5
    status.of(CDS).acked("c0")
    status.of(CDS).nacked_version, status.of(CDS).error = clusters, "port taken"
    status.of(LDS).acked(listeners)
    status.of(typeurls.ROUTE)
    registry.refuse("", "ipv4:127.0.0.1:5", "no_node_id", now=3.0)
    registry.refuse("", "ipv4:127.0.0.1:5", "no_node_id", now=4.0)

    (report,) = registry.report(current)
    assert report.to_json() == {
        "node_id": "edge-1",
        "node_cluster": "edge",
        "protocol": "delta",
        "connected_at": 1.5,
        "peer": "",
        "user_agent": "",
        "authenticated": False,
        "types": {
            "clusters": {
                "state": "NACKED",
                "acked_version": "c0",
                "current_version": clusters,
                "nacked_version": clusters,
                "error": "port taken",
            },
            "listeners": {
                "state": "SYNCED",
                "acked_version": listeners,
                "current_version": listeners,
            },
            "routes": {
                "state": "STALE",
                "acked_version": None,
                "current_version": current.versions[typeurls.ROUTE],
            },
        },
    }
    assert [r.to_json() for r in registry.refusals()] == TODAYS_JSON["refused"]
    assert registry.states(current) == {State.SYNCED: 0, State.STALE: 0, State.NACKED: 1}


def test_a_rejection_reports_as_before() -> None:
    rejection = Rejection("v2", "edge-1", CDS, "port taken", 6.0, rollback=True)
    assert [rejection.report().to_json()] == TODAYS_JSON["rejected"]


def test_keys_older_servers_did_not_send_take_their_defaults_and_unknown_keys_are_ignored() -> None:
    older = copy.deepcopy(TODAYS_JSON)
    del older["refused"], older["rejected"], older["proxies"][0]["protocol"]
    older["added_later"] = {"anything": 1}
    read = from_json(older)
    assert read.refused == () and read.rejected == ()
    assert read.proxies[0].protocol == "sotw"


def test_a_whole_number_reads_as_a_time() -> None:
    sent = {**TODAYS_JSON, "time": 10}
    assert from_json(sent).time == 10.0


def broken(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TODAYS_JSON)
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (
            lambda d: d["proxies"][0]["types"]["clusters"].update(state="GONE"),
            "proxies[0].types.clusters.state",
            "expected one of SYNCED, STALE, NACKED, got 'GONE'",
        ),
        (
            lambda d: d["catalog"].update(valid="yes"),
            "catalog.valid",
            "expected true or false, got a string",
        ),
        (
            lambda d: d["refused"][0].update(count=True),
            "refused[0].count",
            "expected a whole number, got a boolean",
        ),
        (lambda d: d.pop("time"), "time", "missing"),
        (
            lambda d: d["versions"].update({CDS: 7}),
            f'versions["{CDS}"]',
            "expected a string, got a number",
        ),
        (
            lambda d: d["catalog"]["errors"].append(None),
            "catalog.errors[1]",
            "expected a string, got null",
        ),
        (
            lambda d: d["proxies"][0]["types"]["clusters"].pop("error"),
            "proxies[0].types.clusters.error",
            "missing",
        ),
        (lambda d: d.update(proxies={}), "proxies", "expected an array, got an object"),
        (
            lambda d: d["rejected"][0].update(at="noon"),
            "rejected[0].at",
            "expected a number, got a string",
        ),
    ],
)
def test_a_malformed_field_is_named_by_its_json_path(change: Any, path: str, reason: str) -> None:
    with pytest.raises(StatusFormatError) as caught:
        from_json(broken(change))
    assert (caught.value.path, caught.value.reason) == (path, reason)
    assert str(caught.value) == f"{path}: {reason}"


def test_a_document_that_is_not_an_object_is_refused_as_a_whole() -> None:
    with pytest.raises(StatusFormatError) as caught:
        from_json([])
    assert str(caught.value) == "the document: expected an object, got an array"


# Any document the types can hold; times are finite (JSON has no NaN).
texts = st.text(max_size=12)
times = st.floats(allow_nan=False, allow_infinity=False)
maybe = st.none() | texts
type_reports = st.builds(
    TypeReport,
    state=st.sampled_from(State),
    acked_version=maybe,
    current_version=maybe,
    nacked=st.none() | st.builds(Nacked, version=texts, error=texts),
)
proxy_reports = st.builds(
    ProxyReport,
    node_id=texts,
    node_cluster=texts,
    protocol=st.sampled_from(["sotw", "delta"]),
    connected_at=times,
    types=st.dictionaries(texts, type_reports, max_size=4),
)
documents = st.builds(
    StatusDocument,
    version=maybe,
    fleet_acked_version=maybe,
    versions=st.dictionaries(texts, texts, max_size=4),
    catalog=st.builds(
        CatalogStatus,
        path=texts,
        valid=st.booleans(),
        errors=st.lists(texts, max_size=3).map(tuple),
        checked_at=times,
    ),
    proxies=st.lists(proxy_reports, max_size=3).map(tuple),
    refused=st.lists(
        st.builds(
            RefusalReport,
            node_id=texts,
            peer=texts,
            reason=texts,
            count=st.integers(min_value=0),
            first_at=times,
            last_at=times,
        ),
        max_size=3,
    ).map(tuple),
    rollback_on_nack=st.booleans(),
    rejected=st.lists(
        st.builds(
            RejectionReport,
            version=texts,
            node_id=texts,
            type=texts,
            error=texts,
            at=times,
            rolled_back_to=maybe,
        ),
        max_size=3,
    ).map(tuple),
    time=times,
)


@given(documents)
def test_every_document_reads_back_from_its_json_text(doc: StatusDocument) -> None:
    assert from_json(json.loads(json.dumps(doc.to_json()))) == doc
