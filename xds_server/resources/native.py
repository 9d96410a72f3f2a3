"""The native engine: a route's policy compiled to Envoy's own filters (pure).

Filters, in the listener's chain after the strip filters and before ext_authz (each does
nothing on a route without its per-route config, so ext_authz routes are untouched):
- `jwt_authn`: one provider with the JWKS file, issuer, audience and leeway ext_authz uses,
  `exp` required; the verified payload goes to dynamic metadata (`payload`), a refusal's reason
  to `failure`. The `Authorization` header is forwarded untouched, as ext_authz does.
- `rbac`: the catalog's method → action table and the roles allowed each action (read from
  the verified payload: the roles claim, or the single `role` claim in a token without one),
  and the tenant rules: a tenant-scoped service needs a tenant in the token; a client's
  `x-tenant-id` must equal the token's (a CEL condition, evaluated only when it was sent).
- `lua` (`IDENTITY_FILTER`, on per route): `x-user-id`, `x-user-roles`, `x-tenant-id` from the
  verified payload by `contract.encode_identity`'s rule (a client's copies of the first two
  were stripped already; its `x-tenant-id` is replaced or removed after RBAC compared it); a
  token without its user claim is a 401 here, as in ext_authz.
- `local_ratelimit`: the route's limit as a token bucket per (tenant, user), or per client
  address on a public route (wildcard descriptors, one bucket per value).
Denials get ext_authz's terse JSON bodies from the listener's local replies (`local_replies`);
Envoy's access-log line carries the decision's audit fields (`audit_fields`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2
from google.api.expr.v1alpha1 import syntax_pb2
from google.protobuf import any_pb2

from sidecar_shared.contract import (
    ACTION_OF_METHOD,
    TENANT_HEADER,
    RoutePolicy,
)
from xds_server.engines import NativeKeys
from xds_server.resources.common import AUTHZ_FILTER, FILTER_DISABLED, pack, set_ms
from xds_server.resources.retries import RETRY_FILTER, RETRY_FUNCTION

JWT_FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "envoy.filters.http.rbac"
LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
IDENTITY_FILTER = "sidecar.native_identity"
IDENTITY_AND_RETRY = "sidecar.native_identity+retry"  # a script of IDENTITY_FILTER's
PROVIDER = "sidecar"
PAYLOAD = "payload"
FAILURE = "failure"  # jwt_authn's refusal (status and message) in dynamic metadata
# Descriptor values a token without a tenant counts under (no tenant is ever this: a tenant
# is header-safe text, and this has a control character).
_NO_TENANT = "\x01none"
MAX_DYNAMIC_DESCRIPTORS = 20_000


def filters(keys: NativeKeys | None) -> list[hcm_pb2.HttpFilter]:
    """The native filters for the listener's chain (jwt_authn only with keys)."""
    out = []
    if keys is not None:
        out.append(hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=pack(jwt_config(keys))))
    out.append(hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=pack(rbac_pb2.RBAC())))
    limit = local_rate_limit_pb2.LocalRateLimit(stat_prefix="native_limit")
    out.append(hcm_pb2.HttpFilter(name=LIMIT_FILTER, typed_config=pack(limit)))
    if keys is not None:
        lua = lua_pb2.Lua(stat_prefix="native_identity")
        lua.source_codes[IDENTITY_FILTER].inline_string = identity_script(keys)
        lua.source_codes[IDENTITY_AND_RETRY].inline_string = identity_and_retry_script(keys)
        out.insert(
            2, hcm_pb2.HttpFilter(name=IDENTITY_FILTER, disabled=True, typed_config=pack(lua))
        )
    return out


def jwt_config(keys: NativeKeys) -> jwt_pb2.JwtAuthentication:
    provider = jwt_pb2.JwtProvider(
        forward=True,
        payload_in_metadata=PAYLOAD,
        failed_status_in_metadata=FAILURE,
        require_expiration=True,
        clock_skew_seconds=keys.leeway_s,
    )
    if keys.issuer:
        provider.issuer = keys.issuer
    if keys.audience:
        provider.audiences.append(keys.audience)
    if keys.document:
        # Inline (public keys only: `engines.jwks_document`), so a replaced JWKS file reaches
        # Envoy with the next push; jwt_authn reads a file only when it builds the listener
        # (it ignores `watched_directory` there).
        provider.local_jwks.inline_string = keys.document
    else:
        provider.local_jwks.filename = keys.jwks
    provider.jwt_cache_config.jwt_cache_size = 1000
    config = jwt_pb2.JwtAuthentication()
    config.providers[PROVIDER].CopyFrom(provider)
    config.requirement_map[PROVIDER].provider_name = PROVIDER
    return config


@dataclass
class _Cel:
    """A CEL expression tree (google.api.expr syntax) with fresh ids."""

    next_id: int = 1
    expr: syntax_pb2.Expr = field(default_factory=syntax_pb2.Expr)

    def _new(self) -> syntax_pb2.Expr:
        e = syntax_pb2.Expr(id=self.next_id)
        self.next_id += 1
        return e

    def ident(self, name: str) -> syntax_pb2.Expr:
        e = self._new()
        e.ident_expr.name = name
        return e

    def text(self, value: str) -> syntax_pb2.Expr:
        e = self._new()
        e.const_expr.string_value = value
        return e

    def select(self, operand: syntax_pb2.Expr, name: str, test: bool = False) -> syntax_pb2.Expr:
        e = self._new()
        e.select_expr.operand.CopyFrom(operand)
        e.select_expr.field = name
        e.select_expr.test_only = test
        return e

    def call(self, function: str, *args: syntax_pb2.Expr) -> syntax_pb2.Expr:
        e = self._new()
        e.call_expr.function = function
        for arg in args:
            e.call_expr.args.add().CopyFrom(arg)
        return e

    def index(self, operand: syntax_pb2.Expr, key: str) -> syntax_pb2.Expr:
        return self.call("_[_]", operand, self.text(key))


def _tenant_comparison(keys: NativeKeys, policy: RoutePolicy) -> syntax_pb2.Expr:
    """For a request whose client sent `x-tenant-id`: it must equal the token's tenant (path
    `keys.tenant`; '' without one), and a tenant-scoped service needs a tenant in the token."""
    c = _Cel()

    def payload() -> syntax_pb2.Expr:
        meta = c.index(c.select(c.ident("metadata"), "filter_metadata"), JWT_FILTER)
        return c.index(meta, PAYLOAD)

    def has_tenant() -> syntax_pb2.Expr:
        assert keys.tenant is not None
        node = payload()
        for key in keys.tenant[:-1]:
            node = c.index(node, key)
        has = c.select(node, keys.tenant[-1], test=True)
        if len(keys.tenant) == 1:
            return has
        outer = c.select(payload(), keys.tenant[0], test=True)
        return c.call("_&&_", outer, has)

    def tenant() -> syntax_pb2.Expr:
        assert keys.tenant is not None
        node = payload()
        for key in keys.tenant:
            node = c.index(node, key)
        return node

    client = c.index(c.select(c.ident("request"), "headers"), TENANT_HEADER)
    if keys.tenant is None:
        token_tenant = c.text("")
    else:
        token_tenant = c.call("_?_:_", has_tenant(), tenant(), c.text(""))
    same = c.call("_==_", client, token_tenant)
    if policy.tenant_scope != "tenant":
        return same
    required = has_tenant() if keys.tenant is not None else c.call("!_", c.text(""))
    return c.call("_&&_", required, same)


def _payload_matcher(principal: rbac_config.Principal) -> metadata_pb2.MetadataMatcher:
    """`principal` made a match on the request's dynamic metadata (where jwt_authn puts the
    verified payload), to be filled in. (`sourced_metadata`, not the `metadata` field Envoy
    deprecated.)"""
    sourced = principal.sourced_metadata
    sourced.metadata_source = rbac_config.MetadataSource.DYNAMIC
    return sourced.metadata_matcher


def _has_tenant(keys: NativeKeys) -> rbac_config.Principal:
    """The verified payload has a tenant (never, without a tenant claim path). Equal to the
    CEL `has()` for the tenants ext_authz accepts (non-empty strings)."""
    out = rbac_config.Principal()
    if keys.tenant is None:
        out.not_id.any = True
        return out
    m = _payload_matcher(out)
    m.filter = JWT_FILTER
    for key in (PAYLOAD, *keys.tenant):
        m.path.add(key=key)
    m.value.present_match = True
    return out


def _role_principal(keys: NativeKeys, role: str) -> rbac_config.Principal:
    """The verified payload names `role`: in its roles list, or, in a token with no roles
    claim, as its single `role` (ext_authz's fallback). With neither claim configured (a
    provider whose tokens carry no roles, Google's), no token has a role: never."""
    out = rbac_config.Principal()
    if keys.roles is None and keys.role_fallback is None:
        out.not_id.any = True
        return out
    listed = rbac_config.Principal()
    if keys.roles is not None:
        m = _payload_matcher(listed)
        m.filter = JWT_FILTER
        for key in (PAYLOAD, *keys.roles):
            m.path.add(key=key)
        m.value.list_match.one_of.string_match.exact = role
    if keys.role_fallback is None:
        return listed
    single = rbac_config.Principal()
    m = _payload_matcher(single)
    m.filter = JWT_FILTER
    m.path.add(key=PAYLOAD)
    m.path.add(key=keys.role_fallback)
    m.value.string_match.exact = role
    if keys.roles is None:
        return single
    fallback = out.or_ids.ids.add().and_ids
    no_roles = _payload_matcher(fallback.ids.add().not_id)
    no_roles.filter = JWT_FILTER
    for key in (PAYLOAD, *keys.roles):
        no_roles.path.add(key=key)
    no_roles.value.present_match = True
    fallback.ids.add().CopyFrom(single)
    out.or_ids.ids.add().CopyFrom(listed)
    return out


def _methods(action: str) -> rbac_config.Permission:
    out = rbac_config.Permission()
    for method, of in sorted(ACTION_OF_METHOD.items()):
        if of == action:
            rule = out.or_rules.rules.add().header
            rule.name = ":method"
            rule.string_match.exact = method
    return out


def rbac_per_route(keys: NativeKeys, policy: RoutePolicy) -> rbac_pb2.RBACPerRoute:
    """ALLOW policies: per action, its methods by the roles allowed it (or any method, without
    RBAC), under the tenant rules. Anything else is a 403.

    Each action is two policies, so the common request costs no CEL: without a client
    `x-tenant-id`, header and metadata matchers only (a tenant-scoped service needs a tenant
    in the token); with one, the same plus a CEL comparison of the two tenants."""
    out = rbac_pb2.RBACPerRoute()
    rules = out.rbac.rules
    rules.action = rbac_config.RBAC.ALLOW
    actions: list[tuple[str, rbac_config.Permission, list[rbac_config.Principal]]] = []
    if not policy.rbac_required:
        anything = rbac_config.Permission(any=True)
        actions.append(("authenticated", anything, [rbac_config.Principal(any=True)]))
    else:
        for action, roles in sorted(policy.allowed_roles.items()):
            if roles:
                principals = [_role_principal(keys, role) for role in sorted(roles)]
                actions.append((action, _methods(action), principals))
    comparison = _tenant_comparison(keys, policy)
    for name, methods, principals in actions:
        for sent in (False, True):
            p = rules.policies[f"{name}+{TENANT_HEADER}" if sent else name]
            header = rbac_config.Permission()
            header.header.name = TENANT_HEADER
            header.header.present_match = True
            permission = p.permissions.add().and_rules.rules
            permission.add().CopyFrom(methods)
            if sent:
                permission.add().CopyFrom(header)
            else:
                permission.add().not_rule.CopyFrom(header)
            principal = p.principals.add().and_ids.ids
            principal.add().or_ids.ids.extend(principals)
            if policy.tenant_scope == "tenant" and not sent:
                principal.add().CopyFrom(_has_tenant(keys))
            if sent:
                p.condition.CopyFrom(comparison)
    return out


def jwt_per_route(required: bool) -> jwt_pb2.PerRouteConfig:
    out = jwt_pb2.PerRouteConfig()
    if required:
        out.requirement_name = PROVIDER
    else:
        out.disabled = True
    return out


def limit_per_route(
    keys: NativeKeys | None, policy: RoutePolicy
) -> local_rate_limit_pb2.LocalRateLimit:
    """The route's limit: `capacity` tokens, `limit` more every window, one bucket per user of
    a tenant (per client address on a public route)."""
    assert policy.rate_limit is not None
    rl = policy.rate_limit
    out = local_rate_limit_pb2.LocalRateLimit(stat_prefix="native_limit")
    out.filter_enabled.default_value.numerator = 100
    out.filter_enforced.default_value.numerator = 100
    # The default bucket is never the one that limits: as large as Envoy allows.
    bucket = out.token_bucket
    bucket.max_tokens = 1 << 30
    bucket.tokens_per_fill.value = 1 << 30
    set_ms(bucket.fill_interval, 1000)
    out.max_dynamic_descriptors.value = MAX_DYNAMIC_DESCRIPTORS
    descriptor = out.descriptors.add()
    limit = out.rate_limits.add()
    if policy.public:
        descriptor.entries.add(key="remote_address")
        limit.actions.add().remote_address.SetInParent()
    else:
        assert keys is not None
        for key, path in (("tenant", keys.tenant), ("user", keys.user)):
            descriptor.entries.add(key=key)
            action = limit.actions.add().metadata
            action.descriptor_key = key
            action.metadata_key.key = JWT_FILTER
            for part in (PAYLOAD, *(path or ("",))):
                action.metadata_key.path.add(key=part)
            action.source = route_components_pb2.RateLimit.Action.MetaData.DYNAMIC
            if key == "tenant":
                action.default_value = _NO_TENANT
    descriptor.token_bucket.max_tokens = rl.capacity
    descriptor.token_bucket.tokens_per_fill.value = rl.limit
    set_ms(descriptor.token_bucket.fill_interval, rl.window_s * 1000)
    # On a 429, what ext_authz's draft headers say of the policy, and the longest wait.
    for name, value in (
        ("ratelimit-policy", f'"{policy.limit_scope}";q={rl.limit};w={rl.window_s}'),
        ("retry-after", str(rl.window_s)),
    ):
        header = out.response_headers_to_add.add()
        header.header.key = name
        header.header.value = value
        header.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return out


_TERSE = (
    (401, "invalid_token", "a valid bearer token is required"),
    (403, "forbidden", "this request is not allowed"),
    (429, "rate_limited", "too many requests"),
)


def local_replies() -> list[hcm_pb2.ResponseMapper]:
    """Mappers for the listener's local replies (after ext_authz's own): the native filters'
    401, 403 and 429 get ext_authz's terse JSON body and, on a 401, its `WWW-Authenticate`."""
    out = []
    for status, error, message in _TERSE:
        mapper = hcm_pb2.ResponseMapper()
        if status == 401:
            # Every token jwt_authn refuses, whatever its own status (403 for an audience);
            # a 401 of the identity step (no user claim) has no failure but gets the next.
            matcher = mapper.filter.metadata_filter.matcher
            matcher.filter = JWT_FILTER
            matcher.path.add(key=FAILURE)
            matcher.value.present_match = True
            mapper.filter.metadata_filter.match_if_key_not_found.value = False
            mapper.status_code.value = 401
        else:
            comparison = mapper.filter.status_code_filter.comparison
            comparison.op = comparison.EQ
            comparison.value.default_value = status
            comparison.value.runtime_key = f"sidecar.native_reply.{status}"
        body = mapper.body_format_override
        body.content_type = "application/json"
        fields = body.json_format.fields
        fields["error"].string_value = error
        fields["message"].string_value = message
        fields["request_id"].string_value = "%REQ(X-REQUEST-ID)%"
        if status == 401:
            header = mapper.headers_to_add.add()
            header.header.key = "www-authenticate"
            header.header.value = f'Bearer error="invalid_token", error_description="{message}"'
            header.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        out.append(mapper)
        if status == 401:
            plain = hcm_pb2.ResponseMapper()
            plain.CopyFrom(mapper)
            plain.ClearField("status_code")
            comparison = plain.filter.status_code_filter.comparison
            comparison.op = comparison.EQ
            comparison.value.default_value = 401
            comparison.value.runtime_key = "sidecar.native_reply.401"
            out.append(plain)
    return out


_IDENTITY_SCRIPT = """
local USER, ROLES, FALLBACK, TENANT = %s, %s, %s, %s
local find, gsub, format, byte = string.find, string.gsub, string.format, string.byte
local UNSAFE = "[^A-Za-z0-9%%-%%._~:/@]"
local function hex(c) return format("%%%%%%02X", byte(c)) end
local function enc(v)
  if not find(v, UNSAFE) then return v end
  return (gsub(v, UNSAFE, hex))
end
local function at(node, path)
  if path == nil then return nil end
  for _, key in ipairs(path) do
    if type(node) ~= "table" then return nil end
    node = node[key]
  end
  return node
end
local function sidecar_identity(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  local p = meta and meta["payload"]
  if p == nil then return false end
  local user = at(p, USER)
  if type(user) ~= "string" or user == "" then
    handle:respond({[":status"] = "401"}, "")  -- ext_authz's missing_claim
    return true
  end
  local headers = handle:headers()
  headers:replace("x-user-id", enc(user))
  local value = at(p, ROLES)
  if value == nil and FALLBACK ~= nil and p[FALLBACK] ~= nil then value = {p[FALLBACK]} end
  local out, seen = {}, {}
  local function add(r)
    if r ~= "" and not seen[r] then seen[r] = true; out[#out + 1] = enc(r) end
  end
  if type(value) == "string" then
    for r in string.gmatch(value, "%%S+") do add(r) end
  elseif type(value) == "table" then
    for _, r in ipairs(value) do add(r) end
  end
  headers:replace("x-user-roles", table.concat(out, ","))
  local tenant = at(p, TENANT)
  if type(tenant) == "string" then
    headers:replace("x-tenant-id", enc(tenant))
  else
    headers:remove("x-tenant-id")
  end
  return false
end
"""


def _lua_path(path: tuple[str, ...] | None) -> str:
    """A Lua table literal of a claim path (plain names only: `engines._PLAIN`)."""
    if path is None:
        return "nil"
    return "{" + ", ".join(f'"{key}"' for key in path) + "}"


def identity_function(keys: NativeKeys) -> str:
    """Lua defining `sidecar_identity(handle)`: sets `x-user-id`, `x-user-roles` and
    `x-tenant-id` from the verified payload exactly as ext_authz does (the same claims: roles,
    else the single `role`; the roles of a string split at spaces, empty and repeated ones
    dropped; every value encoded by `contract.encode_identity`'s rule; `x-tenant-id` removed
    without a tenant), or answers 401 for a token without its user claim (returning true)."""
    fallback = "nil" if keys.role_fallback is None else f'"{keys.role_fallback}"'
    return _IDENTITY_SCRIPT % (
        _lua_path(keys.user),
        _lua_path(keys.roles),
        fallback,
        _lua_path(keys.tenant),
    )


def identity_script(keys: NativeKeys) -> str:
    """The identity step alone."""
    return identity_function(keys) + "function envoy_on_request(h) sidecar_identity(h) end\n"


def identity_and_retry_script(keys: NativeKeys) -> str:
    """The identity step, then the route's idempotent-only retry conditions (`retries`), in
    one coroutine: a native route whose retries depend on the method runs one Lua script, not
    two (each costs Envoy a coroutine per request)."""
    return (
        identity_function(keys)
        + RETRY_FUNCTION
        + "function envoy_on_request(h)\n"
        + "  if not sidecar_identity(h) then sidecar_retry(h) end\nend\n"
    )


def merge_retry(route: route_components_pb2.Route) -> None:
    """On a route with both the identity step and the retry filter, run the retry script
    inside the identity filter (same `filter_context`) and leave the retry filter off. The
    identity filter sits before ext_authz, the body limit and the cache, the retry filter right
    before the router: callers merge only routes that no cache filter answers (none of those
    others reads the retry headers)."""
    configs = route.typed_per_filter_config
    if IDENTITY_FILTER not in configs or RETRY_FILTER not in configs:
        return
    retry = lua_pb2.LuaPerRoute()
    configs[RETRY_FILTER].Unpack(retry)
    merged = lua_pb2.LuaPerRoute(name=IDENTITY_AND_RETRY)
    merged.filter_context.CopyFrom(retry.filter_context)
    configs[IDENTITY_FILTER].CopyFrom(pack(route_components_pb2.FilterConfig(config=pack(merged))))
    del configs[RETRY_FILTER]


def audit_fields(keys: NativeKeys | None) -> dict[str, str]:
    """Access-log fields that make Envoy's line for a natively decided request its audit line
    (ext_authz's `user`, `tenant`; `authn_failure`: why jwt_authn refused the token; the
    decision itself is `status` and `details`). Empty for requests ext_authz decided."""
    if keys is None:
        return {}
    out = {
        "user": f"%DYNAMIC_METADATA({JWT_FILTER}:{':'.join((PAYLOAD, *keys.user))})%",
        "authn_failure": f"%DYNAMIC_METADATA({JWT_FILTER}:{FAILURE}:message)%",
    }
    if keys.tenant is not None:
        out["tenant"] = f"%DYNAMIC_METADATA({JWT_FILTER}:{':'.join((PAYLOAD, *keys.tenant))})%"
    return out


def per_route(keys: NativeKeys | None, policy: RoutePolicy) -> Iterator[tuple[str, any_pb2.Any]]:
    """The route's per-filter configs (filter name, config) for the native filters."""
    yield AUTHZ_FILTER, FILTER_DISABLED
    if not policy.public and keys is not None:
        yield JWT_FILTER, pack(jwt_per_route(True))
        yield RBAC_FILTER, pack(rbac_per_route(keys, policy))
        per_route = lua_pb2.LuaPerRoute(name=IDENTITY_FILTER)
        identity = route_components_pb2.FilterConfig(config=pack(per_route))
        yield IDENTITY_FILTER, pack(identity)
    if policy.rate_limit is not None:
        yield LIMIT_FILTER, pack(limit_per_route(keys, policy))
