"""Catalogs built in a line, the whole-catalog translation the snapshot builder must equal, and
the resources they translate to, for tests."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from xds_server import typeurls
from xds_server.catalog import Catalog, parse_catalog
from xds_server.resources.common import ROUTE_CONFIG_NAME
from xds_server.resources.routes import route_configuration
from xds_server.snapshot import Snapshot
from xds_server.translate import Named, Options, catalog_wide, service_resources


def translate(catalog: Catalog, options: Options) -> dict[str, Named]:
    """Catalog → resources by type URL, each as (name, message), in one pass: the reference
    `builder.SnapshotBuilder` (incremental) is checked against."""
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


def service(name: str, url: Any = "http://127.0.0.1:8080", **fields: Any) -> dict[str, Any]:
    """A service at /<name>."""
    return {"service_name": name, "base_path": f"/{name}", "internal_url": url, **fields}


def catalog_of(*services: dict[str, Any]) -> Catalog:
    return parse_catalog({"services": list(services)})


def snapshot_of(*services: dict[str, Any], options: Options | None = None) -> Snapshot:
    return build_snapshot(catalog_of(*services), options or Options())


def routes(snap: Snapshot) -> list[route_components_pb2.Route]:
    (res,) = snap.resources[typeurls.ROUTE].values()
    assert isinstance(res.message, route_pb2.RouteConfiguration)
    return list(res.message.virtual_hosts[0].routes)


def cluster(snap: Snapshot, name: str) -> cluster_pb2.Cluster:
    msg = snap.resources[typeurls.CLUSTER][name].message
    assert isinstance(msg, cluster_pb2.Cluster)
    return msg


def assignment(snap: Snapshot, name: str) -> endpoint_pb2.ClusterLoadAssignment:
    msg = snap.resources[typeurls.ENDPOINT][name].message
    assert isinstance(msg, endpoint_pb2.ClusterLoadAssignment)
    return msg
