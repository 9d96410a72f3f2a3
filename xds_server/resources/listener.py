"""The listener: its HTTP connection manager and filter chain (strip client identity headers →
ext_authz → cache → router)."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import (
    address_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import wrappers_pb2

from sidecar_shared.contract import (
    METHOD_OVERRIDE_HEADERS,
    POLICY_HEADER,
    ROLES_HEADER,
    TENANT_UPSTREAM_HEADER,
    USER_HEADER,
)
from xds_server.catalog import Catalog
from xds_server.engines import needs_native_filters
from xds_server.resources import native, observability
from xds_server.resources.authz import filter_config as authz_filter_config
from xds_server.resources.common import (
    ADS_SOURCE,
    AUTHZ_FILTER,
    BUFFER_FILTER,
    HEADER_MUTATION_FILTER,
    LISTENER_NAME,
    METHOD_OVERRIDE_FILTER,
    ROUTE_CONFIG_NAME,
    AuthzOptions,
    EdgeOptions,
    Options,
    pack,
    set_ms,
)
from xds_server.resources.http_cache import cache_filters
from xds_server.resources.retries import needs_retry_filter, retry_filter
from xds_server.resources.routes import needs_body_limit, needs_cache_filter
from xds_server.resources.tls import downstream_tls


def _strip_client_identity() -> hcm_pb2.HttpFilter:
    """Removes identity headers (and the route-policy header) a client sent, before ext_authz or
    routing sees them.

    `x-tenant-id` stays for ext_authz to compare with the token (it overwrites or removes it
    on allow; public routes remove it at the router)."""
    mutation = header_mutation_pb2.HeaderMutation()
    for name in (USER_HEADER, ROLES_HEADER, TENANT_UPSTREAM_HEADER, POLICY_HEADER):
        mutation.mutations.request_mutations.add(remove=name)
    return hcm_pb2.HttpFilter(name=HEADER_MUTATION_FILTER, typed_config=pack(mutation))


def _strip_method_override() -> hcm_pb2.HttpFilter:
    """Removes method-override headers (a framework that honours them would run a method
    ext_authz never authorized). A service that opts in (`method_override`) disables this
    filter on its routes, and ext_authz authorizes the overridden method too."""
    mutation = header_mutation_pb2.HeaderMutation()
    for name in METHOD_OVERRIDE_HEADERS:
        mutation.mutations.request_mutations.add(remove=name)
    return hcm_pb2.HttpFilter(name=METHOD_OVERRIDE_FILTER, typed_config=pack(mutation))


def _ext_authz(catalog: Catalog, options: AuthzOptions) -> hcm_pb2.HttpFilter:
    # Routing may depend on the headers ext_authz sets (tenant upstreams).
    config = authz_filter_config(options, any(s.tenant_upstreams for s in catalog.services))
    return hcm_pb2.HttpFilter(name=AUTHZ_FILTER, typed_config=pack(config))


# A declared length the buffer filter may skip: digits, at most 18 of them (below 2^63, so the
# `<svc>.too_large` route's range match has read it and refused one above the limit first). A
# longer or odd value is buffered like a body without a declared length.
DECLARED_LENGTH = "[0-9]{1,18}"


def _body_limit() -> hcm_pb2.HttpFilter:
    """The buffer filter, off unless a route turns it on with its service's
    max_request_body_bytes, and skipped for a request that declares its length: one above the
    limit never gets here (`<svc>.too_large`) and Envoy's codecs hold the body to the declared
    length, so it streams to the upstream, whose `100 Continue` then reaches the client at
    once. Only a body without a declared length (chunked HTTP/1.1, h2 without content-length)
    is buffered up to the limit."""
    buffer = buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=1 << 20))
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    wrapped.extension_config.name = BUFFER_FILTER
    wrapped.extension_config.typed_config.CopyFrom(pack(buffer))
    rule = wrapped.xds_matcher.matcher_list.matchers.add()
    declared = rule.predicate.single_predicate
    declared.input.name = "content-length"
    declared.input.typed_config.CopyFrom(
        pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name="content-length"))
    )
    declared.value_match.safe_regex.google_re2.SetInParent()
    declared.value_match.safe_regex.regex = DECLARED_LENGTH
    rule.on_match.action.name = "skip"
    rule.on_match.action.typed_config.CopyFrom(pack(skip_action_pb2.SkipFilter()))
    return hcm_pb2.HttpFilter(name=BUFFER_FILTER, disabled=True, typed_config=pack(wrapped))


def http_filters(catalog: Catalog, options: Options) -> list[hcm_pb2.HttpFilter]:
    """The listener's HTTP filter chain, in order: strip client identity headers, strip
    method-override headers, ext_authz, request-body limit (when a service has one; skipped for
    a request that declares its length), cache (when a service is cacheable; see
    `resources.http_cache`), retries by method (when a service's depend on it; see
    `resources.retries`), router."""
    filters = [_strip_client_identity(), _strip_method_override()]
    engines = options.authz.engines
    if needs_native_filters(catalog, engines):
        filters.extend(native.filters(engines.keys))  # `xds_server.engines`: per route
    filters.append(_ext_authz(catalog, options.authz))
    if needs_body_limit(catalog):
        filters.append(_body_limit())
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
    set_edge_limits(manager, options.edge, options.authz.failure_status)
    if needs_native_filters(catalog, options.authz.engines):
        manager.local_reply_config.mappers.extend(native.local_replies())
    audit = (
        native.audit_fields(options.authz.engines.keys)
        if needs_native_filters(catalog, options.authz.engines)
        else None
    )
    manager.access_log.extend(observability.access_logs(options.observability, audit))
    if options.observability.tracing is not None:
        manager.tracing.CopyFrom(observability.tracing(options.observability.tracing))
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        # The port is this Envoy's alone. Left unset, Envoy sets SO_REUSEPORT on Linux and a
        # second Envoy (or any process of the same user that sets it) binds the same port
        # without an error and takes a share of the connections; with it off, that bind fails
        # (Envoy NACKs the listener: "cannot bind ...: Address already in use"). Envoy refuses
        # to change this on a live listener ("reuse port cannot be changed during an update"),
        # and a hot restart hands the old process's socket on as it is, options included.
        enable_reuse_port=wrappers_pb2.BoolValue(value=False),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(
            value=options.edge.connection_buffer_bytes
        ),
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
                ],
                # HTTPS when the settings give a certificate (`resources.tls`).
                transport_socket=downstream_tls(options.listener_tls, options.sds_dir)
                if options.listener_tls is not None
                else None,
            )
        ],
    )


_UNDERSCORE_ACTION = {
    "reject": protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
    "drop": protocol_pb2.HttpProtocolOptions.DROP_HEADER,
}

# The `error` code and message of each local reply Envoy makes (ext_authz's own denials keep
# the body ext_authz wrote). Messages are generic on purpose: nothing internal is named.
_LOCAL_REPLIES: tuple[tuple[int, str, str], ...] = (
    (400, "bad_request", "the request is not valid HTTP"),
    (404, "not_found", "no service at this path"),
    (408, "request_timeout", "the request took too long to arrive"),
    (413, "payload_too_large", "the request body is too large"),
    (431, "headers_too_large", "the request has too many or too large headers"),
    (502, "bad_gateway", "the service answered badly"),
    (503, "unavailable", "the service is unavailable"),
    (504, "gateway_timeout", "the service did not answer in time"),
)


def _json_body(error: str, message: str) -> substitution_format_string_pb2.SubstitutionFormatString:
    body = substitution_format_string_pb2.SubstitutionFormatString(content_type="application/json")
    fields = body.json_format.fields
    fields["error"].string_value = error
    fields["message"].string_value = message
    fields["request_id"].string_value = "%REQ(X-REQUEST-ID)%"
    return body


def _status_is(code: int) -> accesslog_pb2.AccessLogFilter:
    out = accesslog_pb2.AccessLogFilter()
    out.status_code_filter.comparison.op = accesslog_pb2.ComparisonFilter.EQ
    out.status_code_filter.comparison.value.default_value = code
    out.status_code_filter.comparison.value.runtime_key = f"sidecar.local_reply.{code}"
    return out


def _from_ext_authz() -> accesslog_pb2.AccessLogFilter:
    out = accesslog_pb2.AccessLogFilter()
    out.response_flag_filter.flags.append("UAEX")
    return out


def local_reply_config(failure_status: int) -> hcm_pb2.LocalReplyConfig:
    """Every local reply Envoy makes carries `{"error","message","request_id"}` JSON, like
    ext_authz's denials. Order matters (the first matching mapper wins): ext_authz unreachable
    (its failure status with the UAEX flag); ext_authz's own denials (UAEX: its body is kept);
    then Envoy's replies by status; anything else gets a generic body."""
    config = hcm_pb2.LocalReplyConfig()
    unreachable = config.mappers.add()
    unreachable.filter.and_filter.filters.add().CopyFrom(_from_ext_authz())
    unreachable.filter.and_filter.filters.add().CopyFrom(_status_is(failure_status))
    unreachable.body_format_override.CopyFrom(
        _json_body("authz_unavailable", "authorization is unavailable; try again later")
    )
    denied = config.mappers.add()
    denied.filter.CopyFrom(_from_ext_authz())
    denied.body_format_override.text_format_source.inline_string = "%LOCAL_REPLY_BODY%"
    denied.body_format_override.content_type = "application/json"
    for code, error, message in _LOCAL_REPLIES:
        mapper = config.mappers.add()
        mapper.filter.CopyFrom(_status_is(code))
        mapper.body_format_override.CopyFrom(_json_body(error, message))
    config.body_format.CopyFrom(_json_body("request_failed", "the request could not be served"))
    return config


def set_edge_limits(
    manager: hcm_pb2.HttpConnectionManager, edge: EdgeOptions, failure_status: int
) -> None:
    """Envoy's edge-proxy best practices, each from `edge` (docs/security.md)."""
    common = manager.common_http_protocol_options
    common.headers_with_underscores_action = _UNDERSCORE_ACTION[edge.underscore_headers]
    common.max_headers_count.value = edge.max_request_headers
    set_ms(common.idle_timeout, edge.idle_timeout_ms)
    set_ms(manager.request_headers_timeout, edge.request_headers_timeout_ms)
    set_ms(manager.stream_idle_timeout, edge.stream_idle_timeout_ms)
    set_ms(manager.request_timeout, edge.request_timeout_ms)
    h2 = manager.http2_protocol_options
    h2.max_concurrent_streams.value = edge.h2_max_concurrent_streams
    h2.initial_stream_window_size.value = edge.h2_stream_window_bytes
    h2.initial_connection_window_size.value = edge.h2_connection_window_bytes
    # `Expect: 100-continue` goes to the upstream, which sees it only after ext_authz allowed
    # the request: a denied client is never invited to upload its body.
    manager.proxy_100_continue = True
    manager.local_reply_config.CopyFrom(local_reply_config(failure_status))
