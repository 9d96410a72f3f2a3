"""Envoy as a judge: `envoy --mode validate` on a bootstrap, and a snapshot turned into a static
bootstrap so that Envoy can judge translated resources without a control plane."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from sidecar.bootstrap import BootstrapOptions, render
from sidecar_shared import defaults
from sidecar_shared.contract import AUTHZ_CLUSTER
from sidecar_shared.supervise import find_envoy
from xds_server import typeurls
from xds_server.snapshot import Snapshot


def envoy_validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def static_bootstrap(
    snap: Snapshot, admin_port: int = 0, transport: str = defaults.AUTHZ_TRANSPORT
) -> dict[str, Any]:
    endpoints = snap.resources[typeurls.ENDPOINT]
    routes = snap.resources[typeurls.ROUTE]
    clusters = []
    for res in snap.resources[typeurls.CLUSTER].values():
        c = cluster_pb2.Cluster()
        c.CopyFrom(res.message)
        if c.type == cluster_pb2.Cluster.EDS:
            cla = endpoint_pb2.ClusterLoadAssignment()
            cla.CopyFrom(endpoints[c.eds_cluster_config.service_name].message)
            c.ClearField("eds_cluster_config")
            c.type = cluster_pb2.Cluster.STATIC
            c.load_assignment.CopyFrom(cla)
        clusters.append(json_format.MessageToDict(c))
    listeners = []
    for res in snap.resources[typeurls.LISTENER].values():
        lst = listener_pb2.Listener()
        lst.CopyFrom(res.message)
        for chain in lst.filter_chains:
            for f in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                    rc = route_pb2.RouteConfiguration()
                    rc.CopyFrom(routes[manager.rds.route_config_name].message)
                    manager.ClearField("rds")
                    manager.route_config.CopyFrom(rc)
                    f.typed_config.Pack(manager)
        listeners.append(json_format.MessageToDict(lst))
    bootstrap = render(BootstrapOptions(authz_transport=transport))
    return {
        "layered_runtime": bootstrap["layered_runtime"],
        "bootstrap_extensions": bootstrap["bootstrap_extensions"],
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "clusters": clusters
            + [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == AUTHZ_CLUSTER],
            "listeners": listeners,
        },
    }
