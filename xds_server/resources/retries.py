"""Retry policies that never repeat a request the upstream may have acted on.

Envoy retries any method that matches a route's `retry_on`, POST included. Here a route's own
policy keeps only the conditions that fire before the request reached the upstream
(`connect-failure`, `refused-stream`, `reset-before-request`: safe for every method), and a
small filter before the router adds the service's other conditions for idempotent methods
only, as `x-envoy-retry-on` / `x-envoy-retry-grpc-on` (which Envoy adds to the route's). The
service's conditions ride in the route's per-filter config; the filter is off on every other
route. A service that opts in (`retry_non_idempotent`) keeps every condition on the route.

One route per service, not one per method class: Envoy tries routes in order and evaluates a
route's header matchers before its path, so a `:method` matcher on every service would cost
every request on every route it walks past (`bench/route_split.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.catalog import GRPC_RETRY_CONDITIONS, Catalog, RetryPolicy
from xds_server.resources.common import PREVIOUS_HOSTS, pack, set_ms

RETRY_FILTER = "sidecar.retry.idempotent"
_SCRIPT = "idempotent"
# Methods whose repetition has the effect of one request (RFC 9110 §9.2.2). Listed, so an
# unknown method is treated as non-idempotent.
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
# Conditions that fire only when the request never reached the upstream: safe for any method.
SAFE_RETRY_CONDITIONS = frozenset({"connect-failure", "refused-stream", "reset-before-request"})
# Broader conditions that include those (Envoy retries any reset under 5xx and gateway-error).
_INCLUDES_SAFE = frozenset({"5xx", "gateway-error", "reset"})

_LUA = (
    "local idempotent = {"
    + ", ".join(f"{m} = true" for m in IDEMPOTENT_METHODS)
    + """}
function envoy_on_request(request)
  local headers = request:headers()
  if not idempotent[headers:get(":method")] then
    return
  end
  local context = request:filterContext()
  local http = context:get("retry_on")
  if http ~= nil then
    headers:replace("x-envoy-retry-on", http)
  end
  local grpc = context:get("retry_grpc_on")
  if grpc ~= nil then
    headers:replace("x-envoy-retry-grpc-on", grpc)
  end
end
"""
)


def retry_on_before_upstream(retry_on: Sequence[str]) -> list[str]:
    """The part of `retry_on` that never repeats a request the upstream may have seen."""
    safe = {c for c in retry_on if c in SAFE_RETRY_CONDITIONS}
    if _INCLUDES_SAFE.intersection(retry_on):
        safe |= SAFE_RETRY_CONDITIONS
    return sorted(safe)


def by_method(rp: RetryPolicy | None) -> bool:
    """Whether the policy's conditions depend on the method (some are unsafe for POST)."""
    return (
        rp is not None
        and rp.max_retries > 0
        and not rp.retry_non_idempotent
        and not SAFE_RETRY_CONDITIONS.issuperset(rp.retry_on)
    )


def needs_retry_filter(catalog: Catalog) -> bool:
    return any(by_method(s.retry_policy) for s in catalog.services)


def retry_filter() -> hcm_pb2.HttpFilter:
    """Adds a route's idempotent-only conditions to idempotent requests; off unless a route
    turns it on. Goes right before the router."""
    config = lua_pb2.Lua()
    config.source_codes[_SCRIPT].inline_string = _LUA
    return hcm_pb2.HttpFilter(name=RETRY_FILTER, typed_config=pack(config), disabled=True)


def set_retry_policy(rp: RetryPolicy, route: route_components_pb2.Route) -> None:
    """The service's retry policy on `route`: split by method unless it need not be."""
    out = route.route.retry_policy
    if by_method(rp):
        out.retry_on = ",".join(retry_on_before_upstream(rp.retry_on))
        per_route = lua_pb2.LuaPerRoute()
        context = per_route.filter_context
        http = [c for c in rp.retry_on if c not in GRPC_RETRY_CONDITIONS]
        grpc = [c for c in rp.retry_on if c in GRPC_RETRY_CONDITIONS]
        if http:
            context["retry_on"] = ",".join(http)
        if grpc:
            context["retry_grpc_on"] = ",".join(grpc)
        per_route.name = _SCRIPT  # turns the filter on here
        route.typed_per_filter_config[RETRY_FILTER].CopyFrom(pack(per_route))
    else:
        out.retry_on = ",".join(rp.retry_on)
    out.num_retries.value = rp.max_retries
    set_ms(out.retry_back_off.base_interval, rp.backoff_base_ms)
    set_ms(out.retry_back_off.max_interval, rp.backoff_max_ms)
    # Prefer another endpoint for the retry when there is one.
    out.retry_host_predicate.append(PREVIOUS_HOSTS)
    out.host_selection_retry_max_attempts = 3
    if rp.per_try_timeout_ms is not None:
        set_ms(out.per_try_timeout, rp.per_try_timeout_ms)
