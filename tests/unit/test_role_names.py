"""The catalog accepts role names as identity providers emit them, and nothing invisible."""

from __future__ import annotations

import pytest

from xds_server.catalog import CatalogError, parse_catalog

SERVICE = {"service_name": "orders", "base_path": "/o", "internal_url": "http://h:1"}


@pytest.mark.parametrize(
    "role",
    ["read:orders", "/staff/admins", "Sales, EMEA", "Orders.Read", "Équipe ventes", "a" * 256],
)
def test_a_role_name_an_identity_provider_emits_is_accepted(role: str) -> None:
    catalog = parse_catalog({"services": [SERVICE], "roles": {role: ["orders:read"]}})
    assert list(catalog.roles) == [role]


@pytest.mark.parametrize(
    "role", ["", " admin", "admin ", "admin\n", "ad\tmin", "a\x7fb", "a" * 257]
)
def test_a_role_name_with_control_characters_or_edge_spaces_is_refused(role: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog({"services": [SERVICE], "roles": {role: ["orders:read"]}})
    assert any("role names are 1-256 characters" in str(p) for p in caught.value.problems)
