"""Pure translation of a validated catalog into Envoy resources, in the pieces the snapshot
builder (`builder.SnapshotBuilder`) assembles: each service's clusters and endpoints, and what
belongs to no one service. No I/O.

The same catalog and options always give byte-identical resources (fields are set in a fixed
order and maps are serialized deterministically by the snapshot), so every replica computes
the same version. The builders of each kind live in `xds_server.resources`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from xds_server.catalog import Catalog, Service
from xds_server.resources.clusters import cluster, load_assignment, service_clusters, uses_dns
from xds_server.resources.common import LISTENER_NAME, AuthzOptions, Options
from xds_server.resources.http_cache import SIDE, side_cluster, side_listener
from xds_server.resources.listener import listener, local_reply_config
from xds_server.resources.observability import COLLECTOR_CLUSTER, collector_cluster
from xds_server.resources.redirect import REDIRECT_LISTENER, redirect_listener
from xds_server.resources.retries import needs_retry_filter, retry_filter
from xds_server.resources.routes import needs_cache_filter

__all__ = ["AuthzOptions", "Named", "Options", "catalog_wide", "service_resources"]

Named = list[tuple[str, Message]]


def service_resources(s: Service, options: Options) -> tuple[Named, Named]:
    """A service's clusters and endpoints (its own, then per tenant upstream and API version),
    each as (name, message). They depend on the service and the options alone."""
    clusters: Named = []
    endpoints: Named = []
    for name, ups in service_clusters(s):
        clusters.append(
            (
                name,
                cluster(
                    s,
                    ups,
                    name,
                    options.regions,
                    options.sds_dir,
                    options.observability.health_event_log,
                ),
            )
        )
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
    if options.http_redirect_port:
        listeners.append((REDIRECT_LISTENER, redirect_listener(options)))
    traced = options.observability.tracing
    if traced is not None:
        clusters.append((COLLECTOR_CLUSTER, collector_cluster(traced)))
    if needs_cache_filter(catalog):
        clusters.append((SIDE, side_cluster()))
        retries = [retry_filter()] if needs_retry_filter(catalog) else []
        replies = local_reply_config(options.authz.failure_status)
        listeners.append((SIDE, side_listener(retries, replies)))
    return clusters, listeners
