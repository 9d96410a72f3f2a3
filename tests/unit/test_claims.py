"""Claim paths: nested claims, escaped names, several role sources, scope strings, warnings that
name claims but never show their values; and the `x-user-roles` encoding."""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ext_authz.claims import ClaimError, ClaimExtractor, ClaimMapping, parse_paths, set_claim
from sidecar_shared.contract import decode_identity, decode_roles, encode_identity, encode_roles


def extractor(
    user: str = "sub",
    roles: str = "roles",
    tenant: str = "tenant_id",
    role_fallback: str | None = None,
    log: logging.Logger | None = None,
) -> ClaimExtractor:
    mapping = ClaimMapping.parse(user=user, roles=roles, tenant=tenant, role_fallback=role_fallback)
    return ClaimExtractor(mapping, log or logging.getLogger("test-claims"))


def keys(spec: str) -> list[tuple[str, ...]]:
    return [p.keys for p in parse_paths(spec, "SIDECAR_CLAIM_ROLES")]


def test_a_dotted_path_reaches_into_nested_claims() -> None:
    assert keys("realm_access.roles") == [("realm_access", "roles")]
    assert keys("resource_access.my-app.roles") == [("resource_access", "my-app", "roles")]


def test_a_bracketed_name_may_hold_dots_commas_and_spaces() -> None:
    assert keys('resource_access["my.app"].roles') == [("resource_access", "my.app", "roles")]
    assert keys('["a,b c"]') == [("a,b c",)]
    assert keys('["x"]["y"]') == [("x", "y")]


def test_a_url_is_one_claim_name() -> None:
    assert keys("https://example.com/roles") == [("https://example.com/roles",)]
    assert keys("https://example.com/roles, permissions") == [
        ("https://example.com/roles",),
        ("permissions",),
    ]


def test_several_paths_are_separated_by_commas() -> None:
    assert keys("realm_access.roles, resource_access.app.roles") == [
        ("realm_access", "roles"),
        ("resource_access", "app", "roles"),
    ]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "a claim name is missing at position 1"),
        ("realm_access..roles", "a claim name is missing at position 14"),
        ("roles,", "a claim name is missing at position 7"),
        ('["unterminated', 'write a bracketed name as ["name"]'),
        ('["a"', "the bracket is not closed"),
        ("[1]", 'write a bracketed name as ["name"]'),
        ("a b", "unexpected 'b' at position 3"),
    ],
)
def test_a_bad_path_is_refused_with_the_setting_and_position(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match="SIDECAR_CLAIM_ROLES") as caught:
        parse_paths(spec, "SIDECAR_CLAIM_ROLES")
    assert says in str(caught.value)


def test_keycloak_realm_and_client_roles_are_combined_without_duplicates() -> None:
    claims = {
        "sub": "f1b2",
        "realm_access": {"roles": ["offline_access", "orders-admin"]},
        "resource_access": {
            "orders-api": {"roles": ["orders-admin", "orders:refund"]},
            "account": {"roles": ["manage-account"]},
        },
    }
    got = extractor(roles="realm_access.roles,resource_access.orders-api.roles").extract(claims)
    assert got == ("f1b2", ("offline_access", "orders-admin", "orders:refund"), None)


def test_a_space_separated_scope_string_becomes_several_roles() -> None:
    claims = {"sub": "u", "scope": "openid  read:orders\twrite:orders"}
    assert extractor(roles="scope").extract(claims)[1] == ("openid", "read:orders", "write:orders")


def test_roles_in_a_list_keep_their_spaces_and_commas() -> None:
    claims = {"sub": "u", "groups": ["Sales, EMEA", "/staff/admins", ""]}
    assert extractor(roles="groups").extract(claims)[1] == ("Sales, EMEA", "/staff/admins")


def test_an_auth0_namespaced_claim_is_read_by_its_url() -> None:
    claims = {"sub": "auth0|1", "https://example.com/roles": ["admin"]}
    assert extractor(roles="https://example.com/roles").extract(claims)[1] == ("admin",)


def test_user_and_tenant_take_the_first_path_present() -> None:
    ex = extractor(user="preferred_username,sub", tenant="org.id,tid")
    assert ex.extract({"sub": "s", "tid": "t1"}) == ("s", (), "t1")
    assert ex.extract({"sub": "s", "preferred_username": "p", "org": {"id": "o"}}) == ("p", (), "o")


def test_the_role_fallback_is_read_only_when_no_roles_path_is_present() -> None:
    ex = extractor(role_fallback="role")
    assert ex.extract({"sub": "u", "role": "Sales Manager"})[1] == ("Sales Manager",)
    assert ex.extract({"sub": "u", "roles": ["a"], "role": "admin"})[1] == ("a",)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"realm_access": {"roles": ["a"]}}, "missing_claim"),
        ({"sub": 42}, "missing_claim"),
        ({"sub": "u", "realm_access": {"roles": [1, 2]}}, "malformed"),
        ({"sub": "u", "realm_access": {"roles": {"a": True}}}, "malformed"),
        ({"sub": "u", "tenant_id": ["acme"]}, "malformed"),
        ({"sub": "u", "tenant_id": ""}, "malformed"),
    ],
)
def test_a_missing_user_or_a_wrongly_typed_value_is_refused(
    claims: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ClaimError) as caught:
        extractor(roles="realm_access.roles").extract(claims)
    assert caught.value.reason == reason


def test_a_path_through_a_non_object_is_absent() -> None:
    claims = {"sub": "u", "realm_access": ["roles"], "resource_access": None}
    ex = extractor(roles="realm_access.roles,resource_access.app.roles")
    assert ex.extract(claims)[1] == ()


def test_a_path_never_present_is_warned_about_once_with_names_never_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = extractor(roles="realm_access.roles,resource_access.orders-api.roles")
    claims = {
        "sub": "secret-user-id",
        "realm_access": {"roles": ["secret-role"]},
        "resource_access": {"account": {"roles": ["manage-account"]}},
    }
    with caplog.at_level(logging.WARNING, logger="test-claims"):
        for _ in range(3):
            ex.extract(claims)
    warned = [r for r in caplog.records if "configured claim path" in r.getMessage()]
    fields = [r.__dict__["fields"] for r in warned]
    assert [(f["setting"], f["path"]) for f in fields] == [
        ("SIDECAR_CLAIM_ROLES", "resource_access.orders-api.roles"),
        ("SIDECAR_CLAIM_TENANT", "tenant_id"),
    ]
    roles_warning = fields[0]
    assert roles_warning["claims_present"] == ["realm_access", "resource_access", "sub"]
    assert roles_warning["deepest_object"] == "resource_access"
    assert roles_warning["names_there"] == ["account"]
    logged = json.dumps(fields)
    for value in ("secret-user-id", "secret-role", "manage-account"):
        assert value not in logged


def test_a_path_seen_once_is_never_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    ex = extractor(roles="scope")
    with caplog.at_level(logging.WARNING, logger="test-claims"):
        ex.extract({"sub": "u", "scope": "a", "tenant_id": "t"})
        ex.extract({"sub": "u"})
    assert not [r for r in caplog.records if "configured claim path" in r.getMessage()]


def test_set_claim_builds_the_nested_shape_a_path_reads() -> None:
    payload: dict[str, Any] = {"realm_access": {"other": 1}}
    set_claim(payload, "realm_access.roles", ["a"])
    set_claim(payload, 'resource_access["my.app"].roles', ["b"])
    set_claim(payload, "https://example.com/roles", ["c"])
    assert payload == {
        "realm_access": {"other": 1, "roles": ["a"]},
        "resource_access": {"my.app": {"roles": ["b"]}},
        "https://example.com/roles": ["c"],
    }


# --- x-user-roles ---------------------------------------------------------------------------


def test_plain_roles_travel_as_they_are() -> None:
    assert encode_roles(["admin", "read:orders", "/staff/admins", "Task.Read"]) == (
        "admin,read:orders,/staff/admins,Task.Read"
    )


def test_commas_spaces_plus_and_percent_are_percent_encoded() -> None:
    assert encode_roles(["Sales, EMEA", "a+b", "100%"]) == "Sales%2C%20EMEA,a%2Bb,100%25"


def test_no_roles_is_an_empty_header() -> None:
    assert encode_roles([]) == ""
    assert decode_roles("") == []


_ROLE = st.text(min_size=1, max_size=20).filter(lambda r: "\x00" not in r)


@given(_ROLE)
def test_any_user_or_tenant_round_trips_through_its_header(value: str) -> None:
    encoded = encode_identity(value)
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded) and "," not in encoded
    assert decode_identity(encoded) == value == urllib.parse.unquote_plus(encoded)
    assert encode_roles([value]) == encoded  # one rule for every identity header


@given(st.lists(_ROLE, max_size=6))
def test_any_roles_round_trip_through_the_header(roles: list[str]) -> None:
    value = encode_roles(roles)
    assert all(0x21 <= ord(c) <= 0x7E for c in value)  # visible ASCII: no header can split
    assert decode_roles(value) == roles
    # What an upstream in another language does: split at commas, percent-decode each part.
    assert [urllib.parse.unquote_plus(p) for p in value.split(",")] == (roles if value else [""])
