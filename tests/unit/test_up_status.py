"""`sidecar up` waits until its Envoy has ACKed every type the xDS server serves, and stops with
Envoy's own message when it rejected one."""

from __future__ import annotations

import pytest

from sidecar.up import envoy_synced
from xds_server.status import CatalogStatus, Nacked, ProxyReport, State, StatusDocument, TypeReport

SYNCED = TypeReport(State.SYNCED, "v1", "v1")
STALE = TypeReport(State.STALE, None, "v1")


def document(*proxies: ProxyReport) -> StatusDocument:
    return StatusDocument(
        version="v1",
        fleet_acked_version=None,
        versions={},
        catalog=CatalogStatus("/etc/catalog.json", True, (), 1.0),
        proxies=proxies,
        refused=(),
        rollback_on_nack=True,
        rejected=(),
        time=2.0,
    )


def envoy(types: dict[str, TypeReport], node_id: str = "sidecar") -> ProxyReport:
    return ProxyReport(node_id, "edge", "sotw", 1.0, types)


def test_synced_once_clusters_listeners_and_routes_are_all_acked() -> None:
    every = {"clusters": SYNCED, "endpoints": SYNCED, "listeners": SYNCED, "routes": SYNCED}
    assert envoy_synced(document(envoy(every)), "sidecar")


def test_not_synced_while_a_type_is_stale_or_missing_or_another_node_is_the_synced_one() -> None:
    three = {"clusters": SYNCED, "listeners": SYNCED, "routes": SYNCED}
    assert not envoy_synced(document(envoy({**three, "routes": STALE})), "sidecar")
    assert not envoy_synced(document(envoy({"clusters": SYNCED, "listeners": SYNCED})), "sidecar")
    assert not envoy_synced(document(envoy(three, "other")), "sidecar")


def test_a_rejected_type_stops_the_wait_with_envoys_message() -> None:
    nacked = TypeReport(State.NACKED, None, "v1", Nacked("v1", "cannot bind 0.0.0.0:80"))
    doc = document(envoy({"clusters": SYNCED, "listeners": nacked}))
    with pytest.raises(RuntimeError) as caught:
        envoy_synced(doc, "sidecar")
    assert str(caught.value) == "Envoy rejected its listeners: cannot bind 0.0.0.0:80"


def test_a_nack_under_our_node_that_our_envoy_did_not_give_is_ignored() -> None:
    # Another process speaks ADS as our node and NACKs; our Envoy's admin counts no rejection.
    three = {"clusters": SYNCED, "listeners": SYNCED, "routes": SYNCED}
    nacked = TypeReport(State.NACKED, None, "v1", Nacked("v1", "\x1b[2Jgo away"))
    rogue = envoy({"clusters": SYNCED, "listeners": nacked})
    assert not envoy_synced(document(rogue), "sidecar", rejected=lambda: False)
    assert envoy_synced(document(rogue, envoy(three)), "sidecar", rejected=lambda: False)
    with pytest.raises(RuntimeError):
        envoy_synced(document(rogue, envoy(three)), "sidecar", rejected=lambda: True)
