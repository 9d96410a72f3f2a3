"""Signed tokens whose claims are odd but well-formed: non-finite or huge times, names that
would break or blur a header, and non-canonical spellings of a valid token. Each is a 401 with
a clear reason, never a 500 and never an allow."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from ext_authz.decision import CheckInput, Outcome
from ext_authz.tokens import TokenVerifier, VerifierSettings
from sidecar_shared.contract import POLICY_KEY, RoutePolicy
from tests.support.authorizers import key_source, make_authorizer
from tests.support.fakes import FakeClock
from tests.support.policies import encode

SECRET = b"unit-test-secret-that-is-long-enough-for-hs256-0123456789"
NOW = 1_800_000_000
POLICY = encode(RoutePolicy(service="orders", rbac_required=False))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_text(payload_json: str) -> str:
    """An HS256 token over exactly this payload text (PyJWT would not write NaN or 1e999)."""
    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(payload_json.encode())
    mac = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def signed(**claims: Any) -> str:
    payload = {"sub": "alice", "roles": ["reader"], "exp": NOW + 600, "iat": NOW - 10}
    payload.update(claims)
    return signed_text(json.dumps({k: v for k, v in payload.items() if v is not None}))


def check(token: str, clock: FakeClock | None = None) -> Outcome:
    clock = clock or FakeClock(NOW)
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET, clock=clock), clock)
    return make_authorizer(verifier, clock).authorizer.check(
        CheckInput("GET", "/orders/1", {"authorization": f"Bearer {token}"}, {POLICY_KEY: POLICY})
    )


def test_a_plain_token_is_allowed() -> None:  # the baseline every case below departs from
    outcome = check(signed())
    assert outcome.status == 200
    assert dict(outcome.set_headers)["x-user-roles"] == "reader"


@pytest.mark.parametrize(
    "payload",
    [
        '{"sub":"alice","exp":NaN}',
        '{"sub":"alice","exp":Infinity}',
        '{"sub":"alice","exp":1e999}',
        '{"sub":"alice","exp":-Infinity}',
        '{"sub":"alice","exp":1' + "0" * 400 + "}",
        f'{{"sub":"alice","exp":{NOW + 600},"nbf":1{"0" * 400}}}',
        f'{{"sub":"alice","exp":{NOW + 600},"iat":NaN}}',
        f'{{"sub":"alice","exp":{NOW + 600},"nbf":-1}}',
        '{"sub":"alice","exp":253402300800}',
    ],
    ids=[
        "nan",
        "infinity",
        "1e999",
        "-infinity",
        "10^400",
        "nbf_10^400",
        "iat_nan",
        "nbf<0",
        "year_10000",
    ],
)
def test_a_time_that_is_not_a_finite_sane_number_is_401(payload: str) -> None:
    outcome = check(signed_text(payload))
    assert outcome.status == 401, outcome
    assert outcome.reason == "bad_time"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice\r\nx-user-roles: admin"},
        {"sub": "alice\x00"},
        {"sub": " alice"},
        {"sub": "a" * 257},
        {"tenant_id": "acme\n"},
        {"tenant_id": "b" * 300},
        {"roles": ["read\ter"]},
        {"roles": [f"r{i}" for i in range(65)]},
    ],
    ids=[
        "sub_crlf",
        "sub_nul",
        "sub_leading_space",
        "sub_too_long",
        "tenant_lf",
        "tenant_too_long",
        "role_with_tab",
        "65_roles",
    ],
)
def test_a_name_that_is_not_header_safe_is_401(claims: dict[str, Any]) -> None:
    outcome = check(signed(**claims))
    assert outcome.status == 401, outcome
    assert outcome.reason == "bad_claim"


def test_a_role_with_a_comma_stays_one_role_in_x_user_roles() -> None:
    # ["reader", "x,admin"] must never read as three roles upstream.
    outcome = check(signed(roles=["reader", "x,admin"]))
    assert outcome.status == 200
    assert dict(outcome.set_headers)["x-user-roles"] == "reader,x%2Cadmin"


def test_an_empty_role_grants_nothing_and_is_dropped() -> None:
    outcome = check(signed(roles=["reader", ""]))
    assert outcome.status == 200
    assert dict(outcome.set_headers)["x-user-roles"] == "reader"


def test_a_non_ascii_user_is_fine() -> None:
    assert check(signed(sub="josé")).status == 200


@pytest.mark.parametrize(
    "spelling",
    [
        lambda t: t + "=",
        lambda t: t + "==",
        lambda t: t + " ",
        lambda t: t.replace(".", ". ", 1),
        lambda t: t + "\t",
        lambda t: t.replace("-", "+").replace("_", "/") + "+/" if "-" in t or "_" in t else t + "+",
    ],
    ids=["padding", "double_padding", "trailing_space", "inner_space", "tab", "base64_not_url"],
)
def test_only_the_strict_compact_serialization_is_accepted(spelling: Any) -> None:
    token = signed()
    outcome = check(spelling(token))
    assert outcome.status == 401, outcome
    assert outcome.reason == "malformed"


def test_a_refused_token_is_remembered_and_costs_no_second_verification() -> None:
    clock = FakeClock(NOW)
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET, clock=clock), clock)
    wired = make_authorizer(verifier, clock)
    bad = signed_text('{"sub":"alice","exp":NaN}')
    request = CheckInput("GET", "/o", {"authorization": f"Bearer {bad}"}, {POLICY_KEY: POLICY})
    assert wired.authorizer.check(request).reason == "bad_time"
    assert len(verifier.refused) == 1
    assert wired.authorizer.check(request).reason == "bad_time"
    assert len(verifier.refused) == 1


def test_the_negative_cache_is_bounded() -> None:
    clock = FakeClock(NOW)
    settings = VerifierSettings(negative_cache_size=5)
    verifier = TokenVerifier(settings, key_source(SECRET, clock=clock), clock)
    wired = make_authorizer(verifier, clock)
    for i in range(20):
        token = signed(sub=f"user{i}", exp=NOW - 3600)
        wired.authorizer.check(
            CheckInput("GET", "/o", {"authorization": f"Bearer {token}"}, {POLICY_KEY: POLICY})
        )
    assert len(verifier.refused) == 5


def test_a_token_not_yet_valid_is_not_remembered_as_bad() -> None:
    clock = FakeClock(NOW)
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET, clock=clock), clock)
    wired = make_authorizer(verifier, clock)
    token = signed(nbf=NOW + 600, exp=NOW + 3600)
    request = CheckInput("GET", "/o", {"authorization": f"Bearer {token}"}, {POLICY_KEY: POLICY})
    assert wired.authorizer.check(request).status == 401
    clock.now += 700
    assert wired.authorizer.check(request).status == 200
