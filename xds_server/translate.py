"""Pure translation of a validated catalog into Envoy resources. No I/O.

The same catalog and options always give byte-identical resources (fields are set in a fixed
order and maps are serialized deterministically by the snapshot), so every replica computes
the same version. The builders of each kind live in `xds_server.resources`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from xds_server import typeurls
from xds_server.catalog import Catalog
from xds_server.resources.cache import SIDE, side_cluster, side_listener
from xds_server.resources.clusters import cluster, load_assignment, service_clusters, uses_dns
from xds_server.resources.common import (
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    AuthzOptions,
    Options,
)
from xds_server.resources.listener import listener
from xds_server.resources.observability import COLLECTOR_CLUSTER, collector_cluster
from xds_server.resources.retries import needs_retry_filter, retry_filter
from xds_server.resources.routes import needs_cache_filter, route_configuration
from xds_server.snapshot import Snapshot

__all__ = ["AuthzOptions", "Options", "build_snapshot", "translate"]


def translate(catalog: Catalog, options: Options) -> dict[str, list[tuple[str, Message]]]:
    """Catalog → resources by type URL, each as (name, message)."""
    services = sorted(catalog.services, key=lambda s: s.service_name)
    clusters: list[tuple[str, Message]] = []
    endpoints: list[tuple[str, Message]] = []
    for s in services:
        for name, ups in service_clusters(s):
            clusters.append((name, cluster(s, ups, name, options.regions)))
            if not uses_dns(ups):
                endpoints.append((name, load_assignment(name, ups, options.regions)))
    traced = options.observability.tracing
    if traced is not None:
        clusters.append((COLLECTOR_CLUSTER, collector_cluster(traced)))
    listeners: list[tuple[str, Message]] = [(LISTENER_NAME, listener(catalog, options))]
    if needs_cache_filter(catalog):
        clusters.append((SIDE, side_cluster()))
        retries = [retry_filter()] if needs_retry_filter(catalog) else []
        listeners.append((SIDE, side_listener(retries)))
    return {
        typeurls.CLUSTER: clusters,
        typeurls.ENDPOINT: endpoints,
        typeurls.LISTENER: listeners,
        typeurls.ROUTE: [(ROUTE_CONFIG_NAME, route_configuration(catalog))],
    }


def build_snapshot(catalog: Catalog, options: Options) -> Snapshot:
    """Translate and package; the caller checks `consistent()` before serving it."""
    return Snapshot.build(translate(catalog, options))
