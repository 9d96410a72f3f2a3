"""Which engine decides each route (`xds_server.engines`), and what `--decision` accepts."""

from __future__ import annotations

import argparse
import json

import pytest
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from ext_authz import idp
from sidecar_shared.contract import Limit, RoutePolicy
from sidecar_shared.errors import SettingsError
from tests.support.catalogs import SAMPLE
from tests.support.keys import rsa_key
from xds_server import engines
from xds_server.catalog import decode_catalog
from xds_server.engines import EngineOptions, NativeKeys, choose
from xds_server.resources import native
from xds_server.resources.common import AUTHZ_FILTER, AuthzOptions, Options
from xds_server.resources.listener import http_filters, listener
from xds_server.resources.retries import RETRY_FILTER
from xds_server.resources.routes import route_configuration

KEYS = NativeKeys(jwks="/keys/jwks.json")
PROTECTED = RoutePolicy(service="docs", tenant_scope="tenant")
LIMITED = RoutePolicy(service="docs", rate_limit=Limit(10, 60))


def parse(**env: str) -> EngineOptions:
    parser = argparse.ArgumentParser()
    engines.add_arguments(parser, env)
    return engines.from_args(parser.parse_args([]))


def test_auto_compiles_jwt_rbac_and_tenant_routes_natively() -> None:
    choice = choose(PROTECTED, EngineOptions("auto", KEYS))
    assert choice.engine == "native"
    assert choice.reason == "jwt_authn + rbac + tenant"


def test_auto_keeps_limited_routes_on_ext_authz_and_native_compiles_them() -> None:
    assert choose(LIMITED, EngineOptions("auto", KEYS)).engine == "ext_authz"
    assert choose(LIMITED, EngineOptions("native", KEYS)).engine == "native"


def test_a_limit_shared_through_redis_stays_on_ext_authz_in_auto() -> None:
    choice = choose(LIMITED, EngineOptions("auto", KEYS, shared_limits=True))
    assert (choice.engine, choice.reason) == ("ext_authz", "its limit is shared through Redis")


@pytest.mark.parametrize("decision", ["native", "auto"])
def test_what_native_cannot_express_stays_on_ext_authz(decision: str) -> None:
    for policy in (
        RoutePolicy(service="orders", tenant_upstreams=frozenset({"acme"})),
        RoutePolicy(service="legacy", method_override=True),
        RoutePolicy(service="trial", dry_run=True),
        RoutePolicy(service="trial", dry_run=True, public=True, rate_limit=Limit(3, 60)),
    ):
        assert choose(policy, EngineOptions(decision, KEYS)).engine == "ext_authz"


def test_an_hs_secret_is_never_compiled_into_envoy() -> None:
    options = parse(SIDECAR_JWT_SECRET="s" * 40, SIDECAR_JWKS="/keys/jwks.json")
    assert options.keys is None
    choice = choose(PROTECTED, options)
    assert choice.engine == "ext_authz"
    assert "HS secret" in choice.reason


def test_native_without_usable_keys_refuses_to_start() -> None:
    with pytest.raises(SettingsError, match="--decision native"):
        parse(SIDECAR_DECISION="native", SIDECAR_JWT_SECRET="s" * 40)


def test_idp_presets_and_claim_paths_reach_native() -> None:
    options = parse(SIDECAR_JWKS="/j.json", SIDECAR_IDP="keycloak")
    assert options.keys is not None
    assert options.keys.roles == ("realm_access", "roles")
    assert options.keys.role_fallback is None
    bracketed = parse(SIDECAR_JWKS="/j.json", SIDECAR_CLAIM_USER="['https://x/id']")
    assert bracketed.keys is None
    assert "SIDECAR_CLAIM_USER" in bracketed.no_keys


def test_the_default_is_auto() -> None:
    assert parse().decision == "auto"


def test_the_presets_claim_paths_are_ext_authz_s() -> None:
    expected: dict[str | None, tuple[str, str, str]] = {
        None: (idp.DEFAULT.user, idp.DEFAULT.roles, idp.DEFAULT.tenant)
    }
    expected.update({name: (p.user, p.roles, p.tenant) for name, p in idp.PRESETS.items()})
    assert expected == engines.IDP_CLAIMS


def test_a_jwks_url_stays_with_ext_authz() -> None:
    options = parse(SIDECAR_JWKS="https://idp.example/jwks.json")
    assert options.keys is None
    assert "URL" in options.no_keys


def test_without_keys_auto_changes_nothing_envoy_receives() -> None:
    """An HS-secret deployment (the demo, every existing one) gets the very same listener and
    routes under `auto` as under `ext_authz`."""
    catalog = decode_catalog(SAMPLE.read_bytes(), str(SAMPLE))
    auto = parse(SIDECAR_JWT_SECRET="s" * 40)
    assert auto.decision == "auto"
    before = Options(authz=AuthzOptions(engines=EngineOptions("ext_authz")))
    after = Options(authz=AuthzOptions(engines=auto))
    assert listener(catalog, before) == listener(catalog, after)
    assert route_configuration(catalog, before.authz) == route_configuration(catalog, after.authz)


def test_native_routes_skip_ext_authz_and_carry_the_native_filters() -> None:
    catalog = decode_catalog(SAMPLE.read_bytes(), str(SAMPLE))
    options = EngineOptions("native", KEYS)
    routes = route_configuration(catalog, AuthzOptions(engines=options))
    by_name = {r.name: r for r in routes.virtual_hosts[0].routes}
    admin = by_name["admin"].typed_per_filter_config
    assert set(admin) >= {native.JWT_FILTER, native.RBAC_FILTER, native.IDENTITY_FILTER}
    assert "orders" in by_name  # tenant upstreams: still ext_authz
    assert native.JWT_FILTER not in by_name["orders"].typed_per_filter_config
    chain = [f.name for f in http_filters(catalog, Options(authz=AuthzOptions(engines=options)))]
    assert chain.index(native.JWT_FILTER) < chain.index(native.RBAC_FILTER)
    assert chain.index(native.RBAC_FILTER) < chain.index(AUTHZ_FILTER)


def test_a_native_route_runs_its_retry_conditions_in_the_identity_script() -> None:
    """One Lua coroutine per request on a native route with method-dependent retries: the
    identity filter runs the combined script with the retry filter's context, and the retry
    filter is off there; a cacheable route (the cache filter sits between them) keeps both."""
    retries = {"max_retries": 2, "retry_on": ["5xx"]}
    services = [
        {"service_name": n, "base_path": f"/{n}", "internal_url": "http://127.0.0.1:9"}
        | {"retry_policy": retries}
        | extra
        for n, extra in (("plain", {}), ("cached", {"cacheable": True}))
    ]
    catalog = decode_catalog(json.dumps({"services": services}).encode(), "catalog.json")
    routes = route_configuration(catalog, AuthzOptions(engines=EngineOptions("native", KEYS)))
    by_name = {r.name: r.typed_per_filter_config for r in routes.virtual_hosts[0].routes}
    plain = by_name["plain"]
    assert RETRY_FILTER not in plain
    identity = route_components_pb2.FilterConfig()
    plain[native.IDENTITY_FILTER].Unpack(identity)
    script = lua_pb2.LuaPerRoute()
    identity.config.Unpack(script)
    assert script.name == native.IDENTITY_AND_RETRY
    assert script.filter_context["retry_on"] == "5xx"
    assert {RETRY_FILTER, native.IDENTITY_FILTER} <= set(by_name["cached"])
    sources = native.filters(KEYS)[2]
    assert sources.name == native.IDENTITY_FILTER
    lua = lua_pb2.Lua()
    sources.typed_config.Unpack(lua)
    combined = lua.source_codes[native.IDENTITY_AND_RETRY].inline_string
    assert "sidecar_identity(h) then sidecar_retry(h)" in combined


def test_the_jwks_compiled_into_envoy_holds_public_signing_keys_only() -> None:
    """What jwt_authn gets inline: the keys ext_authz would verify with, nothing private or
    symmetric (a file holding either is refused, naming it), compact and stable."""
    rsa = rsa_key("doc-rsa").public_jwk
    enc = {**rsa_key("doc-enc").public_jwk, "use": "enc"}
    raw = json.dumps({"keys": [enc, rsa]}).encode()
    document = json.loads(engines.jwks_document(raw, "keys.json"))
    assert document == {"keys": [rsa]}
    assert engines.jwks_document(raw, "keys.json") == engines.jwks_document(raw, "keys.json")
    for bad, why in (
        (b"{", "not JSON"),
        (b'{"keys": {}}', "not a JWKS"),
        (json.dumps({"keys": [{**rsa, "d": "AQAB"}]}).encode(), "private or symmetric"),
        (json.dumps({"keys": [{"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}]}).encode(), "symm"),
        (json.dumps({"keys": [enc]}).encode(), "no usable signing key"),
    ):
        with pytest.raises(SettingsError, match=why) as err:
            engines.jwks_document(bad, "keys.json")
        assert "keys.json" in str(err.value)
        assert "c2VjcmV0" not in str(err.value)
    keys = NativeKeys(jwks="/keys/jwks.json", document=json.dumps({"keys": [rsa]}))
    provider = native.jwt_config(keys).providers[native.PROVIDER]
    assert json.loads(provider.local_jwks.inline_string) == {"keys": [rsa]}
