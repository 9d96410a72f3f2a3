"""Envoy's HTTP cache for `cacheable` services: shared only when the upstream says so, with the
service's timeouts and retries on every miss, and safe behind tokens.

What Envoy's cache does on its own, and what we add:

- It never serves or stores a request that carries `Authorization` (RFC 9111 §3.5), so behind a
  token it would cache nothing. For cacheable routes the header is moved aside around the cache
  filter and put back before the request leaves Envoy: the upstream gets it exactly as sent.
- It keys entries on the URL only (a response with `Vary` is never stored), so a stored answer
  goes to everyone allowed on the route. **One user's response never reaches another** because
  only responses that are public by their own headers are stored: `Cache-Control: public` or
  `s-maxage`, with a lifetime. Any other answer gets `private` added before the cache sees it,
  so it is passed through and never stored. ext_authz runs before the cache, so every request,
  hit or miss, is still authenticated, authorized and rate limited.
- On a miss it fetches from the upstream itself, beside the router: route timeouts, retries and
  header rules would not apply. So its fetches go to an internal listener ("side") whose
  connection manager routes them again with the same route configuration: restore
  `Authorization`, add `private` unless public, router.

Main chain (only when a service is cacheable): … ext_authz → hide `Authorization` → cache →
restore `Authorization` (for what the cache passes on: bodies, POST, conditional requests) →
router. Hide and restore are off by default and turned on by cacheable routes; other routes
turn the cache off. The internal listener needs Envoy's `envoy.bootstrap.internal_listener`
bootstrap extension (our bootstrap has it).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cache_v2.v3 import cache_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.cache_v2.simple_http_cache.v3 import config_pb2 as simple_cache_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

from xds_server.resources.common import (
    ADS_SOURCE,
    CACHE_FILTER,
    FILTER_DISABLED,
    ROUTE_CONFIG_NAME,
    pack,
)

HIDE_FILTER = "sidecar.cache.hide_authorization"
RESTORE_FILTER = "sidecar.cache.restore_authorization"
PUBLIC_ONLY_FILTER = "sidecar.cache.public_only"
# The internal listener the cache fetches through, and the cluster that reaches it.
SIDE = "sidecar_cache_side"
# Where `Authorization` waits while the cache filter runs; never reaches the upstream.
STASH_HEADER = "x-sidecar-cached-authorization"

# Adds `private` to an answer that is not public by its own headers (public or s-maxage), so
# Envoy's cache passes it on without storing it.
PUBLIC_ONLY_LUA = """
function envoy_on_response(response)
  local headers = response:headers()
  local value = headers:get("cache-control")
  if value ~= nil then
    for directive in string.gmatch(string.lower(value), "[^,]+") do
      local name = string.match(directive, "^%s*([^=%s]+)")
      if name == "public" or name == "s-maxage" then
        return
      end
    end
    headers:replace("cache-control", value .. ", private")
  else
    headers:add("cache-control", "private")
  end
end
"""


def _mutation(
    name: str, mutations: header_mutation_pb2.Mutations, *, off: bool
) -> hcm_pb2.HttpFilter:
    config = header_mutation_pb2.HeaderMutation()
    config.mutations.CopyFrom(mutations)
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(config), disabled=off)


def _move(source: str, target: str) -> header_mutation_pb2.Mutations:
    """`target` ← `source` (when present; any other `target` is dropped), `source` removed."""
    out = header_mutation_pb2.Mutations()
    out.request_mutations.add(remove=target)
    append = out.request_mutations.add().append
    append.header.key = target
    append.header.value = f"%REQ({source})%"
    append.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    out.request_mutations.add(remove=source)
    return out


def _restore(*, off: bool) -> hcm_pb2.HttpFilter:
    return _mutation(RESTORE_FILTER, _move(STASH_HEADER, "authorization"), off=off)


ROUTER = hcm_pb2.HttpFilter(
    name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
)


def cache_filters() -> list[hcm_pb2.HttpFilter]:
    """For the main chain, before the router: hide `Authorization`, cache, restore it."""
    config = cache_pb2.CacheV2Config(
        typed_config=pack(simple_cache_pb2.SimpleHttpCacheV2Config()),
        override_upstream_cluster=SIDE,
    )
    return [
        _mutation(HIDE_FILTER, _move("authorization", STASH_HEADER), off=True),
        hcm_pb2.HttpFilter(name=CACHE_FILTER, typed_config=pack(config)),
        _restore(off=True),
    ]


def side_listener(
    before_router: Sequence[hcm_pb2.HttpFilter] = (),
    local_reply: hcm_pb2.LocalReplyConfig | None = None,
) -> listener_pb2.Listener:
    """The internal listener the cache's fetches go through: routed like any request (with the
    main chain's `before_router` filters that act on the route, such as retries). Its own
    replies (503 no healthy upstream, 504) reach the client as the fetch's answer, not as a
    local reply of the main listener: `local_reply` gives them the main listener's body."""
    public_only = lua_pb2.Lua()
    public_only.default_source_code.inline_string = PUBLIC_ONLY_LUA
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=SIDE,
        rds=hcm_pb2.Rds(config_source=ADS_SOURCE, route_config_name=ROUTE_CONFIG_NAME),
        http_filters=[
            _restore(off=False),
            hcm_pb2.HttpFilter(name=PUBLIC_ONLY_FILTER, typed_config=pack(public_only)),
            *before_router,
            ROUTER,
        ],
    )
    if local_reply is not None:
        manager.local_reply_config.CopyFrom(local_reply)
    out = listener_pb2.Listener(name=SIDE)
    out.internal_listener.SetInParent()
    chain = out.filter_chains.add()
    chain.filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )
    return out


def side_cluster() -> cluster_pb2.Cluster:
    """The cluster the cache fetches through: the internal listener."""
    out = cluster_pb2.Cluster(name=SIDE, type=cluster_pb2.Cluster.STATIC)
    out.load_assignment.cluster_name = SIDE
    endpoint = out.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.envoy_internal_address.server_listener_name = SIDE
    transport = internal_upstream_pb2.InternalUpstreamTransport()
    transport.transport_socket.name = "envoy.transport_sockets.raw_buffer"
    transport.transport_socket.typed_config.CopyFrom(pack(raw_buffer_pb2.RawBuffer()))
    out.transport_socket.name = "envoy.transport_sockets.internal_upstream"
    out.transport_socket.typed_config.CopyFrom(pack(transport))
    return out


# Turns on a filter that is off by default (Envoy wants some per-route config to do it).
ENABLED = pack(
    route_components_pb2.FilterConfig(config=pack(header_mutation_pb2.HeaderMutationPerRoute()))
)


def set_route_cache(route: route_components_pb2.Route, cacheable: bool) -> None:
    """On a cacheable route: the cache, with `Authorization` hidden from it; on any other, no
    cache."""
    per_filter = route.typed_per_filter_config
    if not cacheable:
        per_filter[CACHE_FILTER].CopyFrom(FILTER_DISABLED)
        return
    per_filter[HIDE_FILTER].CopyFrom(ENABLED)
    per_filter[RESTORE_FILTER].CopyFrom(ENABLED)
