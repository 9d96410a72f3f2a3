"""The plain-HTTP listener that answers every request with a redirect to HTTPS (`--http-redirect
PORT`, with the listener speaking HTTPS): nothing is routed, authorized or forwarded on it."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.resources.common import Options, pack
from xds_server.resources.listener import set_edge_limits

REDIRECT_LISTENER = "http_redirect"
HTTPS_PORT = 443


def redirect_listener(options: Options) -> listener_pb2.Listener:
    """On `options.http_redirect_port`: 301 to the same host and path over https, at the HTTPS
    listener's port (left out when it is 443, or 0: chosen by the OS, unknown here)."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=REDIRECT_LISTENER, codec_type=hcm_pb2.HttpConnectionManager.AUTO
    )
    host = manager.route_config.virtual_hosts.add(name="https", domains=["*"])
    route = host.routes.add()
    route.match.prefix = "/"
    route.redirect.https_redirect = True
    if options.listener_port not in (0, HTTPS_PORT):
        route.redirect.port_redirect = options.listener_port
    manager.http_filters.add(
        name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
    )
    set_edge_limits(manager, options.edge, options.authz.failure_status)
    out = listener_pb2.Listener(name=REDIRECT_LISTENER)
    out.enable_reuse_port.value = False  # exclusive, as the main listener (see there)
    out.per_connection_buffer_limit_bytes.value = options.edge.connection_buffer_bytes
    address = out.address.socket_address
    address.address = options.listener_address
    address.port_value = options.http_redirect_port
    chain = out.filter_chains.add()
    chain.filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )
    return out
