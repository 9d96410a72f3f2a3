"""How Envoy calls ext_authz: the ext_authz filter's configuration and each route's policy,
for either transport (`AuthzOptions.transport`).

- `grpc`: `grpc_service` on the filter; each route's policy in its per-route
  `check_settings.context_extensions` (sent in every CheckRequest).
- `http`: `http_service` (Envoy's HTTP ext_authz protocol, `CHECK_PATH_PREFIX` + the client's
  path) on the filter and on each route, the route's carrying its policy in
  `authorization_request.headers_to_add` (`POLICY_HEADER`). Envoy sets that header on the check
  request from the route's config, overwriting a client's copy. Every client header is
  forwarded (the filter's `allowed_headers`; without a list Envoy forwards only a few, and
  `authorization_request.allowed_headers` is deprecated in Envoy 1.40): ext_authz counts them
  to answer 431 before Envoy's header limit would turn its allow into a 500, and reads the
  trace ids. ext_authz's answer is read through three lists: the identity headers onto the
  upstream request (overwriting), the rate-limit headers to the client on success, the
  denial's own headers to the client on denial. Removals travel in `REMOVE_HEADERS_HEADER`.

Either way the policy carries its MAC (`AuthzOptions.policy_key`, `contract.sign`), so a
policy that a client wrote (through an Envoy configured by someone else that forwards client
headers) or that a direct caller wrote is refused by ext_authz.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.type.matcher.v3 import string_pb2

from sidecar_shared.contract import (
    CHECK_PATH_PREFIX,
    DENIAL_HEADERS,
    POLICY_HEADER,
    POLICY_KEY,
    RATE_LIMIT_HEADERS,
    SERVICE_KEY,
    UPSTREAM_HEADERS,
    sign,
)
from xds_server.resources.common import AuthzOptions, set_ms


def _exact(names: Iterable[str], out: string_pb2.ListStringMatcher) -> None:
    for name in names:
        out.patterns.add(exact=name)


def http_service(options: AuthzOptions, policy: str | None = None) -> ext_authz_pb2.HttpService:
    """The HTTP service Envoy calls; with `policy`, the route's (it replaces the filter's)."""
    service = ext_authz_pb2.HttpService(path_prefix=CHECK_PATH_PREFIX)
    service.server_uri.uri = f"http://{options.cluster}"
    service.server_uri.cluster = options.cluster
    set_ms(service.server_uri.timeout, options.timeout_ms)
    if policy is not None:
        request = service.authorization_request
        request.headers_to_add.append(base_pb2.HeaderValue(key=POLICY_HEADER, value=policy))
    response = service.authorization_response
    _exact(UPSTREAM_HEADERS, response.allowed_upstream_headers)
    _exact(DENIAL_HEADERS, response.allowed_client_headers)
    _exact(RATE_LIMIT_HEADERS, response.allowed_client_headers_on_success)
    return service


def filter_config(options: AuthzOptions, clear_route_cache: bool) -> ext_authz_pb2.ExtAuthz:
    """The listener's ext_authz filter: fail closed with `failure_status`."""
    config = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=False,
        clear_route_cache=clear_route_cache,
    )
    if options.transport == "http":
        config.http_service.CopyFrom(http_service(options))
        # Every header: an empty prefix is not allowed, a regex that matches anything is.
        config.allowed_headers.patterns.add().safe_regex.regex = ".*"
    else:
        config.grpc_service.envoy_grpc.cluster_name = options.cluster
        set_ms(config.grpc_service.timeout, options.timeout_ms)
    config.status_on_error.code = options.failure_status
    return config


def per_route(options: AuthzOptions, service: str, policy: str) -> ext_authz_pb2.ExtAuthzPerRoute:
    """A route's policy (`sidecar_shared.contract.encode`d) where the transport carries it,
    signed with `options.policy_key` when there is one."""
    if options.policy_key:
        policy = sign(policy, options.policy_key)
    out = ext_authz_pb2.ExtAuthzPerRoute()
    if options.transport == "http":
        out.check_settings.http_service.CopyFrom(http_service(options, policy))
    else:
        context = out.check_settings.context_extensions
        context[SERVICE_KEY] = service
        context[POLICY_KEY] = policy
    return out
