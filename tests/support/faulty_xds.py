"""The real xDS server, except that services named `envoy-rejects-*` become clusters Envoy
refuses (an SNI longer than the 255 bytes Envoy allows). The catalog's validation never lets
such a cluster through, so this is how tests see what happens when Envoy NACKs a config.

`python -m tests.support.faulty_xds [xds-server flags]`
"""

from __future__ import annotations

import sys

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.support.translation import translate
from xds_server import cli, typeurls
from xds_server.catalog import CatalogError, Problem, decode_catalog
from xds_server.settings import parse
from xds_server.snapshot import Snapshot

REJECTED_PREFIX = "envoy-rejects-"


def build(raw: bytes, source: str) -> tuple[Snapshot, int]:
    catalog = decode_catalog(raw, source)
    resources = translate(catalog, parse(sys.argv[1:]).translate)
    for name, message in resources[typeurls.CLUSTER]:
        if name.startswith(REJECTED_PREFIX):
            assert isinstance(message, cluster_pb2.Cluster)
            message.transport_socket.name = "envoy.transport_sockets.tls"
            message.transport_socket.typed_config.Pack(tls_pb2.UpstreamTlsContext(sni="x" * 300))
    snapshot = Snapshot.build(resources)
    if snapshot.consistent():
        raise CatalogError([Problem("", p) for p in snapshot.consistent()], source)
    return snapshot, len(catalog.services)


if __name__ == "__main__":
    sys.exit(cli.main(build=build))
