"""Pure translation of a validated catalog into Envoy resources. No I/O.

The same catalog and options always give byte-identical resources (fields are set in a fixed
order and maps are serialized deterministically by the snapshot), so every replica computes
the same version. The builders of each kind live in `xds_server.resources`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from xds_server import typeurls
from xds_server.catalog import Catalog, Service
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

__all__ = [
    "AuthzOptions",
    "Options",
    "build_snapshot",
    "catalog_wide",
    "service_resources",
    "translate",
]

Named = list[tuple[str, Message]]


def service_resources(s: Service, options: Options) -> tuple[Named, Named]:
    """A service's clusters and endpoints (its own, then per tenant upstream and API version),
    each as (name, message). They depend on the service and the options alone."""
    clusters: Named = []
    endpoints: Named = []
    for name, ups in service_clusters(s):
        clusters.append((name, cluster(s, ups, name, options.regions)))
        if not uses_dns(ups):
            endpoints.append(
                (name, load_assignment(name, ups, options.regions, s.overprovisioning_factor))
            )
    return clusters, endpoints


def catalog_wide(catalog: Catalog, options: Options) -> tuple[Named, Named]:
    """The clusters and listeners that belong to no one service: the listener, the trace
    collector, and the cache's side listener and cluster."""
    clusters: Named = []
    listeners: Named = [(LISTENER_NAME, listener(catalog, options))]
    traced = options.observability.tracing
    if traced is not None:
        clusters.append((COLLECTOR_CLUSTER, collector_cluster(traced)))
    if needs_cache_filter(catalog):
        clusters.append((SIDE, side_cluster()))
        retries = [retry_filter()] if needs_retry_filter(catalog) else []
        listeners.append((SIDE, side_listener(retries)))
    return clusters, listeners


def translate(catalog: Catalog, options: Options) -> dict[str, Named]:
    """Catalog → resources by type URL, each as (name, message)."""
    clusters: Named = []
    endpoints: Named = []
    for s in sorted(catalog.services, key=lambda s: s.service_name):
        more_clusters, more_endpoints = service_resources(s, options)
        clusters += more_clusters
        endpoints += more_endpoints
    wide_clusters, listeners = catalog_wide(catalog, options)
    return {
        typeurls.CLUSTER: clusters + wide_clusters,
        typeurls.ENDPOINT: endpoints,
        typeurls.LISTENER: listeners,
        typeurls.ROUTE: [(ROUTE_CONFIG_NAME, route_configuration(catalog, options.authz))],
    }


def build_snapshot(catalog: Catalog, options: Options) -> Snapshot:
    """Translate and package; the caller checks `consistent()` before serving it."""
    return Snapshot.build(translate(catalog, options))
