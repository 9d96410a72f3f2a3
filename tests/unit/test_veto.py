"""Who may veto a version (`fleet`): only the first stream of a node, an Envoy, authenticated
(or with unauthenticated vetoes allowed), that ACKed something; and no rollback grants what the
version rolled back from revokes (`grants`)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from tests.support.policies import POLICY_KEY
from tests.support.translation import build_snapshot
from xds_server import grants, typeurls
from xds_server.cache import SnapshotCache
from xds_server.catalog import parse_catalog
from xds_server.fleet import Fleet
from xds_server.metrics import XdsMetrics
from xds_server.observers import Ack, Nack, StreamEvent
from xds_server.resources.common import AuthzOptions
from xds_server.snapshot import Snapshot
from xds_server.translate import Options

RDS, CDS = typeurls.ROUTE, typeurls.CLUSTER


def catalog(
    roles: dict[str, list[str]],
    timeout_ms: int = 1000,
    transport: str = "grpc",
    signed: bool = True,
) -> Snapshot:
    """A snapshot of one service, its policies signed as a server with a policy key signs them
    (`signed`), or as one without."""
    services: list[dict[str, Any]] = [
        {
            "service_name": "orders",
            "base_path": "/orders",
            "internal_url": "http://127.0.0.1:8000",
            "timeout_ms": timeout_ms,
        }
    ]
    key = POLICY_KEY if signed else b""
    options = Options(authz=AuthzOptions(transport=transport, policy_key=key))
    return build_snapshot(parse_catalog({"services": services, "roles": roles}), options)


WRITER = catalog({"clerk": ["orders:read", "orders:write"]})
REVOKED = catalog({"clerk": ["orders:read"]})
REVOKED_EDITED = catalog({"clerk": ["orders:read"]}, timeout_ms=2000)
WRITER_EDITED = catalog({"clerk": ["orders:read", "orders:write"]}, timeout_ms=2000)


class Rig:
    def __init__(self, *served: Snapshot, unauthenticated_veto: bool = False) -> None:
        self.cache = SnapshotCache()
        self.registry = CollectorRegistry()
        self.fleet = Fleet(
            self.cache,
            XdsMetrics(self.registry),
            logging.getLogger("test"),
            True,
            unauthenticated_veto=unauthenticated_veto,
        )
        for s in served:
            self.cache.set(s)
        self.streams = 0

    def connect(
        self, node_id: str, *acked: Snapshot, envoy: bool = True, authenticated: bool = True
    ) -> int:
        self.streams += 1
        agent = "envoy" if envoy else "gRPC Python 1.70"
        self.fleet.connected(StreamEvent(self.streams, "sotw", node_id, "", agent, authenticated))
        for s in acked:
            for type_url, version in s.versions.items():
                self.fleet.acked(Ack(self.streams, node_id, type_url, version))
        return self.streams

    def nack(self, stream: int, s: Snapshot, type_url: str = RDS) -> None:
        v = s.versions[type_url]
        self.fleet.nacked(Nack("n", type_url, v, s.version, "no", stream_id=stream))

    def current(self) -> Snapshot | None:
        return self.cache.current()


def test_an_authenticated_envoy_that_acked_vetoes_a_version() -> None:
    rig = Rig(WRITER, WRITER_EDITED)
    stream = rig.connect("edge", WRITER)
    rig.nack(stream, WRITER_EDITED)
    assert rig.current() is WRITER
    assert rig.fleet.rejection(WRITER_EDITED.version) is not None


def test_nacks_that_may_not_veto_leave_the_version_served_and_unbanned() -> None:
    cases = {
        "unauthenticated": dict(authenticated=False),
        "not an envoy (proxyless gRPC)": dict(envoy=False),
    }
    for what, kwargs in cases.items():
        rig = Rig(WRITER, WRITER_EDITED)
        rig.connect("edge", WRITER)
        stream = rig.connect("other", WRITER, **kwargs)
        rig.nack(stream, WRITER_EDITED)
        assert rig.current() is WRITER_EDITED, what
        assert rig.fleet.rejection(WRITER_EDITED.version) is None, what
        assert rig.fleet.report() == (), what
    # A stream that never ACKed anything.
    rig = Rig(WRITER, WRITER_EDITED)
    rig.connect("edge", WRITER)
    rig.nack(rig.connect("fresh"), WRITER_EDITED)
    assert rig.current() is WRITER_EDITED and rig.fleet.rejection(WRITER_EDITED.version) is None
    # A duplicate of a node already connected: the first stream of the node votes.
    rig = Rig(WRITER, WRITER_EDITED)
    rig.connect("edge", WRITER)
    rig.nack(rig.connect("edge", WRITER), WRITER_EDITED)
    assert rig.current() is WRITER_EDITED and rig.fleet.rejection(WRITER_EDITED.version) is None


def test_unauthenticated_vetoes_count_only_when_allowed() -> None:
    rig = Rig(WRITER, WRITER_EDITED, unauthenticated_veto=True)
    rig.nack(rig.connect("edge", WRITER, authenticated=False), WRITER_EDITED)
    assert rig.current() is WRITER


def test_a_duplicate_votes_once_the_first_stream_of_its_node_closed() -> None:
    rig = Rig(WRITER, WRITER_EDITED)
    first = rig.connect("edge", WRITER)
    second = rig.connect("edge", WRITER)
    rig.fleet.closed(StreamEvent(first, "sotw", "edge"))
    rig.nack(second, WRITER_EDITED)
    assert rig.current() is WRITER


def test_no_nack_rolls_a_revocation_back() -> None:
    # The race: a revocation NACKed by a proxy that may vote does not bring back the grant.
    rig = Rig(WRITER, REVOKED)
    rig.nack(rig.connect("edge", WRITER), REVOKED)
    assert rig.current() is REVOKED
    # The hold: an older version that granted more is not a target for a later edit's NACK.
    rig = Rig(WRITER, REVOKED, REVOKED_EDITED)
    rig.nack(rig.connect("edge", WRITER), REVOKED_EDITED)
    assert rig.current() is REVOKED_EDITED
    # A target that grants the same is one.
    rig = Rig(WRITER, REVOKED, REVOKED_EDITED)
    rig.nack(rig.connect("edge", WRITER, REVOKED), REVOKED_EDITED)
    assert rig.current() is REVOKED


def test_grants_compare_route_policies_on_both_transports() -> None:
    for transport, signed in itertools.product(("grpc", "http"), (True, False)):
        writer = catalog(
            {"clerk": ["orders:read", "orders:write"]}, transport=transport, signed=signed
        )
        revoked = catalog({"clerk": ["orders:read"]}, transport=transport, signed=signed)
        public = catalog({}, transport=transport, signed=signed)
        assert grants.grants_more(writer, revoked), transport
        assert not grants.grants_more(revoked, writer), transport
        assert not grants.grants_more(writer, writer), transport
        assert grants.grants_more(writer, public) or grants.grants_more(public, writer)
    # A service removed: the version that had it grants more.
    assert grants.grants_more(WRITER, build_snapshot(parse_catalog({"services": []}), Options()))
