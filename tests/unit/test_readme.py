"""The README documents what operators configure against: the gRPC health service names, every
identity-provider preset, every Redis URL form, and the settings for them."""

from __future__ import annotations

import re

import pytest

from ext_authz import idp
from ext_authz.ratelimit import redis_url
from sidecar_shared.contract import AUTHZ_HEALTH_SERVICE, XDS_HEALTH_SERVICE
from tests.support.catalogs import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"no section '{title}'"
    return match.group(1)


@pytest.mark.parametrize("name", [XDS_HEALTH_SERVICE, AUTHZ_HEALTH_SERVICE])
def test_each_grpc_health_service_name_is_documented(name: str) -> None:
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("name", sorted(idp.PRESETS))
def test_each_preset_has_a_row_and_a_worked_example(name: str) -> None:
    text = section("Identity providers")
    assert f"| `{name}` |" in text
    assert f"SIDECAR_IDP={name} " in text


@pytest.mark.parametrize("scheme", sorted(redis_url._SCHEMES))
def test_each_redis_url_form_is_documented(scheme: str) -> None:
    assert f"`{scheme}://" in section("Rate limits")


@pytest.mark.parametrize(
    "setting",
    ["SIDECAR_IDP", "SIDECAR_JWKS_CA_FILE", "SIDECAR_CLAIM_ROLES", "SIDECAR_REDIS_URL"],
)
def test_each_interop_setting_is_in_a_settings_table(setting: str) -> None:
    assert re.search(rf"^\| [^|]*`{setting}[`=]", README, re.M), setting
