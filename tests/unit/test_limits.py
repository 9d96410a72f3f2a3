"""Rate-limit keys and headers."""

from __future__ import annotations

import pytest

from ext_authz.limits import address_key, client_address, rate_headers, user_key
from ext_authz.ratelimit import Limit, LimitDecision

LIMIT = Limit(120, 60, 20)


@pytest.mark.parametrize(
    ("xff", "hops", "expected"),
    [
        ("203.0.113.9, 10.0.0.1", 0, "10.0.0.1"),  # no trusted proxy: the peer
        ("203.0.113.9, 10.0.0.1", 1, "203.0.113.9"),  # one load balancer in front
        ("198.51.100.7, 203.0.113.9, 10.0.0.1", 1, "203.0.113.9"),  # a client-forged entry
        ("10.0.0.1", 3, "10.0.0.1"),  # fewer entries than hops: the oldest there is
        ("", 2, "10.0.0.1"),
    ],
)
def test_the_client_address_honours_only_trusted_hops(xff: str, hops: int, expected: str) -> None:
    headers = {"x-forwarded-for": xff} if xff else {}
    assert client_address(headers, "10.0.0.1", hops) == expected


def test_keys_separate_services_tenants_users_and_addresses() -> None:
    keys = {
        user_key("orders", "acme", "alice"),
        user_key("orders", "globex", "alice"),
        user_key("orders", None, "alice"),
        user_key("billing", "acme", "alice"),
        address_key("orders", "alice"),
    }
    assert len(keys) == 5


def test_draft_headers_advertise_the_limit_not_the_burst() -> None:
    allowed = LimitDecision(True, 120, 139, 66, 0)
    assert dict(rate_headers("orders", LIMIT, allowed, "draft")) == {
        "ratelimit-policy": '"orders";q=120;w=60',
        "ratelimit": '"orders";r=119;t=66',
    }


def test_a_denial_adds_retry_after() -> None:
    denied = LimitDecision(False, 120, 0, 60, 7)
    headers = dict(rate_headers("orders", LIMIT, denied, "draft"))
    assert headers["retry-after"] == "7"
    assert headers["ratelimit"] == '"orders";r=0;t=60'


def test_legacy_headers() -> None:
    decision = LimitDecision(True, 120, 62, 30, 0)
    assert dict(rate_headers("orders", LIMIT, decision, "legacy")) == {
        "ratelimit-limit": "120",
        "ratelimit-remaining": "42",
        "ratelimit-reset": "30",
    }
