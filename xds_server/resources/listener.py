"""The listener: its HTTP connection manager and filter chain (strip client identity headers →
ext_authz → cache → router)."""

from __future__ import annotations

from envoy.config.core.v3 import (
    address_pb2,
    config_source_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

from sidecar_shared.contract import (
    ROLES_HEADER,
    TENANT_UPSTREAM_HEADER,
    USER_HEADER,
)
from xds_server.catalog import Catalog
from xds_server.resources.cache import cache_filters
from xds_server.resources.common import (
    ADS_SOURCE,
    AUTHZ_FILTER,
    HEADER_MUTATION_FILTER,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    AuthzOptions,
    Options,
    pack,
    set_ms,
)
from xds_server.resources.retries import needs_retry_filter, retry_filter
from xds_server.resources.routes import needs_cache_filter


def _strip_client_identity() -> hcm_pb2.HttpFilter:
    """Removes identity headers a client sent, before ext_authz or routing sees them.

    `x-tenant-id` stays for ext_authz to compare with the token (it overwrites or removes it
    on allow; public routes remove it at the router)."""
    mutation = header_mutation_pb2.HeaderMutation()
    for name in (USER_HEADER, ROLES_HEADER, TENANT_UPSTREAM_HEADER):
        mutation.mutations.request_mutations.add(remove=name)
    return hcm_pb2.HttpFilter(name=HEADER_MUTATION_FILTER, typed_config=pack(mutation))


def _ext_authz(catalog: Catalog, options: AuthzOptions) -> hcm_pb2.HttpFilter:
    config = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=False,
        # Routing may depend on the headers ext_authz sets (tenant upstreams).
        clear_route_cache=any(s.tenant_upstreams for s in catalog.services),
    )
    config.grpc_service.envoy_grpc.cluster_name = options.cluster
    set_ms(config.grpc_service.timeout, options.timeout_ms)
    config.status_on_error.code = options.failure_status
    return hcm_pb2.HttpFilter(name=AUTHZ_FILTER, typed_config=pack(config))


def http_filters(catalog: Catalog, options: Options) -> list[hcm_pb2.HttpFilter]:
    """The listener's HTTP filter chain, in order: strip client identity headers, ext_authz,
    cache (when a service is cacheable; see `resources.cache`), retries by method (when a
    service's depend on it; see `resources.retries`), router."""
    filters = [_strip_client_identity(), _ext_authz(catalog, options.authz)]
    if needs_cache_filter(catalog):
        filters.extend(cache_filters())
    if needs_retry_filter(catalog):
        filters.append(retry_filter())
    filters.append(
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    )
    return filters


def listener(catalog: Catalog, options: Options) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="ingress_http",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ADS_SOURCE, route_config_name=ROUTE_CONFIG_NAME),
        http_filters=http_filters(catalog, options),
        # An edge proxy: trust the peer address, not client-sent forwarding headers, and
        # give every external request a fresh x-request-id.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT,
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=options.listener_address, port_value=options.listener_port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(manager),
                    )
                ]
            )
        ],
    )
