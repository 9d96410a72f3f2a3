"""The pure decision: roles, actions, tenants; and the policy's trip through xDS."""

from __future__ import annotations

import pytest

from ext_authz.policy import authorize
from ext_authz.ratelimit import Limit
from sidecar_shared.contract import RoutePolicy, decode, encode
from xds_server.catalog import parse_catalog
from xds_server.route_policy import allowed_roles, compile_policy

ROLES = {
    "admin": ["*"],
    "customer": ["orders:read", "orders:write"],
    "support": ["*:read", "orders:delete"],
    "writer": ["*:write"],
    "auditor": ["billing:*"],
}

ORDERS = RoutePolicy(
    service="orders",
    rbac_required=True,
    allowed_roles=allowed_roles(ROLES, "orders"),
    tenant_scope="tenant",
)


@pytest.mark.parametrize(
    ("method", "roles", "allowed"),
    [
        ("GET", ("customer",), True),
        ("HEAD", ("customer",), True),
        ("OPTIONS", ("customer",), True),
        ("POST", ("customer",), True),
        ("PUT", ("customer",), True),
        ("PATCH", ("customer",), True),
        ("DELETE", ("customer",), False),
        ("DELETE", ("support",), True),
        ("POST", ("support",), False),
        ("GET", ("support",), True),
        ("PUT", ("writer",), True),
        ("GET", ("writer",), False),
        ("GET", ("auditor",), False),
        ("DELETE", ("admin",), True),
        ("GET", (), False),
        ("GET", ("stranger",), False),
        ("DELETE", ("customer", "support"), True),
        ("TRACE", ("admin",), False),
        ("get", ("customer",), True),
    ],
)
def test_roles_grant_actions(method: str, roles: tuple[str, ...], allowed: bool) -> None:
    verdict = authorize(ORDERS, method, roles, "acme", None)
    assert verdict.allowed is allowed, verdict
    if not allowed:
        assert verdict.reason in {"role_not_allowed", "method_not_allowed"}


def test_without_rbac_any_valid_token_passes() -> None:
    policy = RoutePolicy(service="catalog", rbac_required=False)
    assert authorize(policy, "DELETE", (), None, None).allowed


@pytest.mark.parametrize(
    ("scope", "token_tenant", "client_tenant", "reason"),
    [
        ("tenant", "acme", None, "ok"),
        ("tenant", None, None, "tenant_required"),
        ("tenant", "acme", "acme", "ok"),
        ("tenant", "acme", "globex", "tenant_mismatch"),
        ("global", None, None, "ok"),
        ("global", "acme", "globex", "tenant_mismatch"),
        ("global", None, "acme", "tenant_mismatch"),
    ],
)
def test_tenant_scope(
    scope: str, token_tenant: str | None, client_tenant: str | None, reason: str
) -> None:
    policy = RoutePolicy(service="s", rbac_required=False, tenant_scope=scope)  # type: ignore[arg-type]
    assert authorize(policy, "GET", (), token_tenant, client_tenant).reason == reason


def test_the_policy_survives_its_wire_format() -> None:
    policy = RoutePolicy(
        service="orders",
        public=False,
        rbac_required=True,
        allowed_roles=allowed_roles(ROLES, "orders"),
        tenant_scope="tenant",
        rate_limit=Limit(120, 60, 20),
        tenant_upstreams=frozenset({"acme"}),
    )
    text = encode(policy)
    assert decode(text) == policy
    assert encode(decode(text)) == text


@pytest.mark.parametrize("text", ["", "{}", "[]", '{"v":2}', '{"v":1,"service":"x"}', "nope"])
def test_an_unreadable_policy_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="policy"):
        decode(text)


def test_the_catalog_compiles_into_each_routes_policy() -> None:
    catalog = parse_catalog(
        {
            "services": [
                {
                    "service_name": "orders",
                    "base_path": "/orders",
                    "internal_url": "http://127.0.0.1:1",
                    "tenant_scope": "tenant",
                    "rate_limit": {"requests_per_minute": 120, "burst": 20},
                    "tenant_upstreams": {"acme": "http://127.0.0.1:2"},
                },
                {"service_name": "billing", "base_path": "/b", "internal_url": "http://h:1"},
            ],
            "roles": ROLES,
        }
    )
    policy = compile_policy(catalog, catalog.services[0])
    assert policy.allowed_roles == {
        "read": {"admin", "customer", "support"},
        "write": {"admin", "customer", "writer"},
        "delete": {"admin", "support"},
    }
    assert policy.rate_limit == Limit(120, 60, 20)
    assert policy.tenant_upstreams == {"acme"}
    billing = compile_policy(catalog, catalog.services[1])
    assert billing.allowed_roles["read"] == {"admin", "support", "auditor"}
