"""Retry policies that never repeat a request the upstream may have acted on.

Envoy retries any method that matches a route's `retry_on`, POST included. Here a route's own
policy keeps only the conditions that fire before the request reached the upstream
(`connect-failure`, `refused-stream`, `reset-before-request`: safe for every method), and a
small filter before the router adds the service's other conditions for idempotent methods
only, as `x-envoy-retry-on` / `x-envoy-retry-grpc-on` (which Envoy adds to the route's). The
service's conditions ride in the route's per-filter config; the filter is off on every other
route. A service that opts in (`retry_non_idempotent`) keeps every condition on the route.

Each attempt has a time limit, so a hung endpoint costs an attempt, not the whole request: the
policy's `per_try_timeout_ms`, or else, when a timed-out attempt can be retried (`5xx`,
`gateway-error` or `reset` in the conditions that apply), an equal share of the service's
`timeout_ms` per attempt. The derived limit rides with the idempotent-only conditions
(`x-envoy-upstream-rq-per-try-timeout-ms`): a request that would not be retried keeps the
whole `timeout_ms`. A retry goes to another endpoint when there is one, and to another priority
(region) when there is one.

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
from xds_server.resources.common import PREVIOUS_HOSTS, PREVIOUS_PRIORITIES, pack, set_ms

RETRY_FILTER = "sidecar.retry.idempotent"
_SCRIPT = "idempotent"
# Methods whose repetition has the effect of one request (RFC 9110 §9.2.2). Listed, so an
# unknown method is treated as non-idempotent.
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
# Conditions that fire only when the request never reached the upstream: safe for any method.
SAFE_RETRY_CONDITIONS = frozenset({"connect-failure", "refused-stream", "reset-before-request"})
# Broader conditions that include those (Envoy retries any reset under 5xx and gateway-error).
_INCLUDES_SAFE = frozenset({"5xx", "gateway-error", "reset"})
# Conditions under which Envoy retries an attempt that ran out of its per-try time.
RETRIES_TIMEOUTS = frozenset({"5xx", "gateway-error", "reset"})

# `sidecar_retry(request)`: the route's idempotent-only conditions on an idempotent request,
# from the per-route `filter_context`. A function, so another per-route script (the native
# engine's identity step, `native.IDENTITY_AND_RETRY`) can run it in the same coroutine.
RETRY_FUNCTION = (
    "local idempotent = {"
    + ", ".join(f"{m} = true" for m in IDEMPOTENT_METHODS)
    + """}
local function sidecar_retry(request)
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
  local per_try = context:get("per_try_timeout_ms")
  if per_try ~= nil then
    headers:replace("x-envoy-upstream-rq-per-try-timeout-ms", per_try)
  end
end
"""
)
_LUA = RETRY_FUNCTION + "function envoy_on_request(request) sidecar_retry(request) end\n"


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
    """Whether a route's retries (a service's, or an endpoint's) depend on the method."""
    return any(
        by_method(s.retry_policy) or any(by_method(e.retry_policy) for e in s.endpoints)
        for s in catalog.services
    )


def retry_filter() -> hcm_pb2.HttpFilter:
    """Adds a route's idempotent-only conditions to idempotent requests; off unless a route
    turns it on. Goes right before the router."""
    config = lua_pb2.Lua()
    config.source_codes[_SCRIPT].inline_string = _LUA
    return hcm_pb2.HttpFilter(name=RETRY_FILTER, typed_config=pack(config), disabled=True)


def derived_per_try_timeout_ms(rp: RetryPolicy, timeout_ms: int) -> int | None:
    """Each attempt's equal share of `timeout_ms`, when a timed-out attempt can be retried
    under `rp`'s conditions; otherwise none (the attempt has the whole `timeout_ms`)."""
    if rp.max_retries == 0 or not RETRIES_TIMEOUTS.intersection(rp.retry_on):
        return None
    return max(1, timeout_ms // (rp.max_retries + 1))


def set_retry_policy(rp: RetryPolicy, route: route_components_pb2.Route, timeout_ms: int) -> None:
    """The service's retry policy on `route` (whose whole timeout is `timeout_ms`): split by
    method unless it need not be."""
    out = route.route.retry_policy
    derived = derived_per_try_timeout_ms(rp, timeout_ms)
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
        if rp.per_try_timeout_ms is None and derived is not None:
            # Only for requests whose timed-out attempt is retried (the idempotent ones).
            context["per_try_timeout_ms"] = str(derived)
        per_route.name = _SCRIPT  # turns the filter on here
        route.typed_per_filter_config[RETRY_FILTER].CopyFrom(pack(per_route))
    else:
        out.retry_on = ",".join(rp.retry_on)
        if rp.per_try_timeout_ms is None and derived is not None:
            set_ms(out.per_try_timeout, derived)
    out.num_retries.value = rp.max_retries
    set_ms(out.retry_back_off.base_interval, rp.backoff_base_ms)
    set_ms(out.retry_back_off.max_interval, rp.backoff_max_ms)
    # Prefer another endpoint for the retry when there is one, in another region when there
    # is one (with a single priority, Envoy keeps the whole priority load).
    out.retry_host_predicate.append(PREVIOUS_HOSTS)
    out.host_selection_retry_max_attempts = 3
    out.retry_priority.CopyFrom(PREVIOUS_PRIORITIES)
    if rp.per_try_timeout_ms is not None:
        set_ms(out.per_try_timeout, rp.per_try_timeout_ms)
