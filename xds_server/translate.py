"""Pure translation of a validated catalog into Envoy resources. No I/O.

The same catalog and options always give byte-identical resources (fields are set in a fixed
order and maps are serialized deterministically by the snapshot), so every replica computes
the same version. The builders of each kind live in `xds_server.resources`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from xds_server import typeurls
from xds_server.catalog import Catalog
from xds_server.resources.clusters import cluster, load_assignment, tenant_cluster_name, uses_dns
from xds_server.resources.common import (
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    AuthzOptions,
    Options,
)
from xds_server.resources.listener import listener
from xds_server.resources.routes import route_configuration
from xds_server.snapshot import Snapshot

__all__ = ["AuthzOptions", "Options", "build_snapshot", "translate"]


def translate(catalog: Catalog, options: Options) -> dict[str, list[tuple[str, Message]]]:
    """Catalog → resources by type URL, each as (name, message)."""
    services = sorted(catalog.services, key=lambda s: s.service_name)
    clusters: list[tuple[str, Message]] = []
    endpoints: list[tuple[str, Message]] = []
    for s in services:
        for name, ups in [(s.service_name, s.upstreams)] + [
            (tenant_cluster_name(s.service_name, t), s.tenant_upstreams_of(t))
            for t in sorted(s.tenant_upstreams)
        ]:
            clusters.append((name, cluster(s, ups, name)))
            if not uses_dns(ups):
                endpoints.append((name, load_assignment(name, ups)))
    return {
        typeurls.CLUSTER: clusters,
        typeurls.ENDPOINT: endpoints,
        typeurls.LISTENER: [(LISTENER_NAME, listener(catalog, options))],
        typeurls.ROUTE: [(ROUTE_CONFIG_NAME, route_configuration(catalog, options.authz))],
    }


def build_snapshot(catalog: Catalog, options: Options) -> Snapshot:
    """Translate and package; the caller checks `consistent()` before serving it."""
    return Snapshot.build(translate(catalog, options))
