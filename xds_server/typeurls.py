"""Type URLs of the xDS resources we serve, and the order they are pushed in."""

from typing import Final

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# Clusters before their endpoints, listeners before their routes: a route that names a cluster
# Envoy does not have yet answers 503.
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# Types whose empty subscription means "everything" (SotW wildcard).
WILDCARD_TYPES: Final = frozenset({CLUSTER, LISTENER})

SHORT_NAMES: Final = {
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    LISTENER: "listeners",
    ROUTE: "routes",
}

# The message each type URL names.
MESSAGES: Final[dict[str, type[Message]]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}
