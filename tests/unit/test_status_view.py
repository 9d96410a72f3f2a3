"""`sidecar status` as text, from hand-built status documents: the lines and the exit code."""

from __future__ import annotations

from typing import Any

from sidecar import status_view
from sidecar.endpoints import EndpointHealth
from xds_server.status import (
    CatalogStatus,
    Nacked,
    ProxyReport,
    RefusalReport,
    RejectionReport,
    State,
    StatusDocument,
    TypeReport,
)

GOOD = CatalogStatus("/etc/catalog.json", True, (), 5.0)


def document(*proxies: ProxyReport, **changes: Any) -> StatusDocument:
    fields: dict[str, Any] = {
        "version": "v1",
        "fleet_acked_version": "v1",
        "versions": {},
        "catalog": GOOD,
        "proxies": proxies,
        "refused": (),
        "rollback_on_nack": True,
        "rejected": (),
        "time": 10.0,
    }
    return StatusDocument(**{**fields, **changes})


def proxy(node_id: str, protocol: str = "sotw", **types: TypeReport) -> ProxyReport:
    return ProxyReport(node_id, "edge", protocol, 1.0, types)


SYNCED = TypeReport(State.SYNCED, "c1", "c1")
STALE = TypeReport(State.STALE, "c0", "c1")
NACKED = TypeReport(State.NACKED, "c0", "c1", Nacked("c1", "port 80 taken"))


def endpoint(service: str, port: int, health: str = "HEALTHY") -> EndpointHealth:
    reasons = () if health == "HEALTHY" else ("fails its health check",)
    return EndpointHealth(service, service, f"127.0.0.1:{port}", health, reasons, 1, "", 0)


def test_every_proxy_is_listed_with_each_types_state() -> None:
    doc = document(
        proxy("edge-1", clusters=SYNCED, listeners=NACKED),
        proxy("edge-2", "delta", routes=STALE),
    )
    assert status_view.sync_lines(doc) == [
        "serving version v1 from /etc/catalog.json",
        "2 proxy(ies) connected",
        "  edge-1 (edge, sotw)",
        "    clusters   SYNCED  acked c1",
        "    listeners  NACKED  acked c0  error: port 80 taken",
        "  edge-2 (edge, delta)",
        "    routes     STALE   acked c0",
    ]


BAD = CatalogStatus("/etc/catalog.json", False, ("services[0].timeout_ms: too big",), 5.0)


def test_an_invalid_catalog_is_shown_with_its_errors() -> None:
    assert status_view.sync_lines(document(catalog=BAD)) == [
        "serving version v1 from /etc/catalog.json",
        "catalog on disk is INVALID; still serving the last good version:",
        "  services[0].timeout_ms: too big",
        "0 proxy(ies) connected",
    ]


def test_an_invalid_catalog_with_nothing_loaded_before_never_claims_a_last_good_version() -> None:
    assert status_view.sync_lines(document(catalog=BAD, version=None))[:3] == [
        "serving nothing: no valid catalog was loaded from /etc/catalog.json",
        "catalog on disk is INVALID:",
        "  services[0].timeout_ms: too big",
    ]


def test_a_rejected_version_served_is_never_called_the_last_good_one() -> None:
    rejected = (RejectionReport("v1", "edge-1", "listeners", "boom", 6.0, None),)
    lines = status_view.sync_lines(document(catalog=BAD, rejected=rejected))
    assert lines[1] == "catalog on disk is INVALID; serving a version Envoy rejected:"
    lines = status_view.sync_lines(document(rejected=rejected))
    assert lines[1] == "version v1 was rejected by Envoy (see REJECTED below)"


def test_text_a_peer_sent_cannot_reach_the_terminal_as_control_sequences() -> None:
    hostile = "\x1b[2K\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\x9b1A\u202e\r(all SYNCED)\n\\x1b"
    doc = document(
        ProxyReport(hostile, hostile, hostile, 1.0, {"clusters": nacked_by(hostile)}),
        rejected=(RejectionReport("v3", hostile, hostile, hostile, 6.0, hostile),),
        refused=(RefusalReport(hostile, hostile, hostile, 1, 3.0, 3.0),),
    )
    text = "\n".join(status_view.sync_lines(doc))
    assert not any(ord(c) < 0x20 and c != "\n" for c in text)
    assert not any(0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in text)
    assert len(text.splitlines()) == len(status_view.sync_lines(doc))
    escaped = status_view.shown(hostile)
    assert escaped.startswith("\\x1b[2K\\x1b]0;pwned\\x07")
    assert escaped.endswith("\\x9b1A\\u202e\\x0d(all SYNCED)\\x0a\\\\x1b")
    assert status_view.shown("edge-1 é ü 東京") == "edge-1 é ü 東京"


def nacked_by(error: str) -> TypeReport:
    return TypeReport(State.NACKED, "c0", "c1", Nacked("c1", error))


def test_two_streams_with_one_node_id_are_marked() -> None:
    doc = document(proxy("edge-1", clusters=SYNCED), proxy("edge-1", clusters=SYNCED))
    lines = status_view.sync_lines(doc)
    assert lines.count("  edge-1 (edge, sotw)  DUPLICATE node id: another stream names it too") == 2


def test_each_stream_shows_its_peer_and_what_it_says_it_is_escaped() -> None:
    envoy = ProxyReport("edge-1", "edge", "sotw", 1.0, {}, "ipv4:127.0.0.1:40000", "envoy", True)
    rogue = ProxyReport(
        "edge-1", "edge", "sotw", 2.0, {}, "ipv4:127.0.0.1:40001", "x\x1b]0;", False
    )
    lines = status_view.sync_lines(document(envoy, rogue))
    assert (
        "  edge-1 (edge, sotw) from ipv4:127.0.0.1:40000 (authenticated)  DUPLICATE"
        in "\n".join(lines)
    )
    assert (
        "  edge-1 (edge, sotw) from ipv4:127.0.0.1:40001 [x\\x1b]0;]  DUPLICATE node id: "
        "another stream names it too"
    ) in lines


def test_rejected_versions_and_refused_streams_follow_the_proxies() -> None:
    doc = document(
        rejected=(
            RejectionReport("v3", "edge-1", "clusters", "boom", 6.0, "v2"),
            RejectionReport("v2", "edge-1", "listeners", "bang", 5.0, None),
        ),
        refused=(
            RefusalReport("", "ipv4:127.0.0.1:5", "no_node_id", 2, 3.0, 4.0),
            RefusalReport("edge-9", "ipv4:127.0.0.1:6", "too_many_names", 1, 3.0, 3.0),
        ),
    )
    assert status_view.sync_lines(doc)[2:] == [
        "  REJECTED version v3 by edge-1 (clusters): boom; every proxy rolled back to v2",
        "  REJECTED version v2 by edge-1 (listeners): bang",
        "  REFUSED (no node id) from ipv4:127.0.0.1:5: no_node_id (2 stream(s))",
        "  REFUSED edge-9 from ipv4:127.0.0.1:6: too_many_names (1 stream(s))",
    ]


def test_endpoint_health_ends_with_each_service_that_has_no_healthy_endpoint() -> None:
    health = [endpoint("down", 8001, "UNHEALTHY"), endpoint("svc", 8000)]
    assert status_view.health_lines("127.0.0.1:9901", health) == [
        "endpoint health seen by the Envoy at 127.0.0.1:9901:",
        "  down",
        "    down             127.0.0.1:8001         UNHEALTHY  fails its health check",
        "  svc",
        "    svc              127.0.0.1:8000         HEALTHY",
        "  NO HEALTHY ENDPOINT: down answers 503",
    ]


def test_all_is_well_when_every_type_is_synced_and_every_service_has_a_healthy_endpoint() -> None:
    doc = document(proxy("edge-1", clusters=SYNCED, listeners=SYNCED))
    assert status_view.exit_code(doc, [endpoint("svc", 8000)]) == status_view.ALL_WELL == 0


def test_nothing_serves_without_a_proxy_or_without_a_version() -> None:
    assert status_view.exit_code(document(), []) == status_view.NOTHING_SERVES == 3
    synced = proxy("edge-1", clusters=SYNCED)
    assert status_view.exit_code(document(synced, version=None), []) == 3


def test_an_invalid_catalog_or_unknown_health_needs_attention() -> None:
    synced = proxy("edge-1", clusters=SYNCED)
    assert status_view.exit_code(document(synced, catalog=BAD), []) == 2
    assert status_view.exit_code(document(synced), [], health_unknown=True) == 2


def test_a_nacked_type_then_a_stale_one_needs_attention() -> None:
    doc = document(proxy("edge-1", clusters=NACKED), proxy("edge-2", clusters=STALE))
    assert status_view.exit_code(doc, []) == status_view.NEEDS_ATTENTION == 2


def test_a_refused_stream_needs_attention_even_when_every_proxy_is_synced() -> None:
    refused = (RefusalReport("", "ipv4:127.0.0.1:5", "no_node_id", 1, 3.0, 3.0),)
    doc = document(proxy("edge-1", clusters=SYNCED), refused=refused)
    assert status_view.exit_code(doc, []) == 2


def test_a_service_without_a_healthy_endpoint_needs_attention() -> None:
    doc = document(proxy("edge-1", clusters=SYNCED))
    assert status_view.exit_code(doc, [endpoint("down", 8001, "UNHEALTHY")]) == 2


def test_a_rejected_version_alone_does_not_change_the_exit_code() -> None:
    rejected = (RejectionReport("v3", "edge-1", "clusters", "boom", 6.0, "v2"),)
    doc = document(proxy("edge-1", clusters=SYNCED), rejected=rejected)
    assert status_view.exit_code(doc, []) == 0
