"""Reading what the xDS server told Envoy about ext_authz, whichever the transport."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from sidecar_shared.contract import POLICY_HEADER, POLICY_KEY

AUTHZ_FILTER = "envoy.filters.http.ext_authz"


def per_route(route: route_components_pb2.Route) -> ext_authz_pb2.ExtAuthzPerRoute:
    out = ext_authz_pb2.ExtAuthzPerRoute()
    route.typed_per_filter_config[AUTHZ_FILTER].Unpack(out)
    return out


def route_policy(route: route_components_pb2.Route) -> str:
    """The encoded policy a route sends ext_authz: from its context extensions (gRPC) or the
    header Envoy adds to the check request (HTTP); "" when it sends none."""
    settings = per_route(route).check_settings
    if settings.HasField("http_service"):
        added = settings.http_service.authorization_request.headers_to_add
        return str(next((h.value for h in added if h.key == POLICY_HEADER), ""))
    return str(settings.context_extensions.get(POLICY_KEY, ""))
