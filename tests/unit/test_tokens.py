"""Every adversarial token is a 401, never a 500 and never an allow; good tokens pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from ext_authz import keys as keys_module
from ext_authz.decision import CheckInput, Outcome
from ext_authz.keys import KeyConfigError, KeySource
from ext_authz.tokens import Identity, TokenError, TokenVerifier, VerifierSettings
from sidecar_shared.contract import POLICY_KEY, RoutePolicy
from tests.support.authorizers import key_source, make_authorizer
from tests.support.fakes import FakeClock
from tests.support.keys import KeyPair, ec_key, ed_key, rsa_key, write_jwks
from tests.support.policies import encode
from tests.support.wait import wait_until

SECRET = b"unit-test-secret-that-is-long-enough-for-hs512-0123456789abcdefgh"
NOW = 1_800_000_000.0
POLICY = encode(
    RoutePolicy(
        service="orders",
        rbac_required=False,
        allowed_roles={},
    )
)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "roles": ["admin"],
        "tenant_id": "acme",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
        "iss": "https://issuer.test",
        "aud": "sidecar",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs(payload: dict[str, Any], key: bytes = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


def hs_raw(payload: dict[str, Any], key: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses to sign with a PEM key, an attacker does not."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def signed(pair: KeyPair, alg: str, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(payload, pair.private, algorithm=alg, headers={"kid": kid or pair.kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    return write_jwks(tmp_path / "jwks.json", rsa_key(), ec_key(), ed_key())


def make_verifier(
    jwks: Path | None = None,
    secret: bytes | None = SECRET,
    clock: FakeClock | None = None,
    keys: KeySource | None = None,
    **kw: Any,
) -> TokenVerifier:
    clock = clock or FakeClock(NOW)
    settings = VerifierSettings(issuer="https://issuer.test", audience="sidecar", leeway_s=30, **kw)
    return TokenVerifier(settings, keys or key_source(secret, jwks, clock=clock), clock)


def check(verifier: TokenVerifier, token: str) -> Outcome:
    auth = make_authorizer(verifier, FakeClock(NOW)).authorizer
    return auth.check(
        CheckInput(
            method="GET",
            path="/orders/1",
            headers={"authorization": f"Bearer {token}"},
            context={POLICY_KEY: POLICY},
        )
    )


NONE_HEADER = b64(b'{"alg":"none","typ":"JWT"}')
HS_HEADER = b64(b'{"alg":"HS256"}')

ADVERSARIAL: dict[str, Callable[[], str]] = {
    "alg_none": lambda: f"{NONE_HEADER}.{b64(json.dumps(claims()).encode())}.",
    "alg_none_with_signature": lambda: jwt.encode(claims(), "", algorithm="none") + "c2ln",
    "hs256_signed_with_the_rsa_public_key": lambda: hs_raw(claims(), rsa_key().public_pem()),
    "expired": lambda: hs(claims(exp=int(NOW) - 3600)),
    "nbf_in_the_future": lambda: hs(claims(nbf=int(NOW) + 3600)),
    "iat_in_the_future_beyond_leeway": lambda: hs(claims(iat=int(NOW) + 3600)),
    "wrong_issuer": lambda: hs(claims(iss="https://evil.test")),
    "wrong_audience": lambda: hs(claims(aud="someone-else")),
    "bad_signature": lambda: hs(claims(), key=b"another-secret-that-is-long-enough-0123456"),
    "truncated": lambda: hs(claims())[:-20],
    "four_segments": lambda: hs(claims()) + ".eyJ9",
    "non_base64": lambda: "abc$%^.def!@#.ghi&*(",
    "non_json_payload": lambda: f"{HS_HEADER}.{b64(b'not json')}.c2ln",
    "unknown_kid": lambda: signed(rsa_key(), "RS256", claims(), kid="who-knows"),
    "kid_with_path_characters": lambda: signed(
        rsa_key(), "RS256", claims(), kid="../../etc/passwd"
    ),
    "missing_sub": lambda: hs(claims(sub=None)),
    "missing_exp": lambda: hs(claims(exp=None)),
    "rsa_key_used_for_an_ec_algorithm": lambda: signed(ec_key(), "ES256", claims(), kid="rsa-1"),
    "empty": lambda: "",
    "a_64_kib_token": lambda: "a" * 65536 + "." + "b" * 10 + ".c",
    "roles_not_a_list_of_strings": lambda: hs(claims(roles=[1, 2])),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_an_adversarial_token_is_401(name: str, jwks_file: Path) -> None:
    outcome = check(make_verifier(jwks_file), ADVERSARIAL[name]())
    assert outcome.status == 401, outcome
    assert outcome.reason != "internal_error"


def test_hs256_with_the_rsa_public_key_is_refused_even_with_no_secret(jwks_file: Path) -> None:
    token = hs_raw(claims(), rsa_key().public_pem())
    outcome = check(make_verifier(jwks_file, secret=None), token)
    assert (outcome.status, outcome.reason) == (401, "unsupported_alg")


def test_a_64_kib_token_is_refused_before_any_parsing(jwks_file: Path) -> None:
    verifier = make_verifier(jwks_file)
    token = ADVERSARIAL["a_64_kib_token"]()
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    assert caught.value.reason == "malformed"
    assert "longer than" in caught.value.detail


@pytest.mark.parametrize(
    ("pair", "alg"),
    [
        (rsa_key(), "RS256"),
        (rsa_key(), "RS384"),
        (rsa_key(), "RS512"),
        (rsa_key(), "PS256"),
        (ec_key(), "ES256"),
        (ed_key(), "EdDSA"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.kid,
)
def test_asymmetric_tokens_from_the_jwks_are_accepted(
    pair: KeyPair, alg: str, jwks_file: Path
) -> None:
    identity = make_verifier(jwks_file).verify(signed(pair, alg, claims()))
    assert identity == Identity("alice", ("admin",), "acme", NOW + 600 + 30)


def test_es384_needs_a_p384_key(tmp_path: Path) -> None:
    p384 = ec_key("ec-384", "P-384")
    verifier = make_verifier(write_jwks(tmp_path / "j.json", p384))
    assert verifier.verify(signed(p384, "ES384", claims())).user == "alice"
    with pytest.raises(TokenError):  # an ES256 token naming the P-384 key
        verifier.verify(signed(ec_key(), "ES256", claims(), kid="ec-384"))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_are_accepted_with_the_secret(alg: str) -> None:
    assert make_verifier().verify(hs(claims(), alg=alg)).tenant == "acme"


def test_a_single_role_claim_is_accepted() -> None:
    identity = make_verifier().verify(hs(claims(roles=None, role="support")))
    assert identity.roles == ("support",)


def test_clock_skew_within_the_leeway_is_tolerated() -> None:
    assert make_verifier().verify(hs(claims(iat=int(NOW) + 20, nbf=int(NOW) + 20))).user


def test_issuer_and_audience_are_not_required_when_not_configured() -> None:
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET), FakeClock(NOW))
    assert verifier.verify(hs(claims(iss=None, aud="anything"))).user == "alice"


def test_no_key_configured_refuses_to_start() -> None:
    with pytest.raises(KeyConfigError, match="no key configured"):
        key_source()


def test_a_short_secret_refuses_to_start() -> None:
    with pytest.raises(KeyConfigError, match="at least 32 bytes"):
        key_source(b"short")


def test_a_jwks_with_private_material_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    path.write_text(json.dumps({"keys": [{**rsa_key().public_jwk, "d": "AAAA"}]}))
    with pytest.raises(KeyConfigError, match="private"):
        make_verifier(path)


def test_a_cached_token_is_never_used_after_it_expires() -> None:
    clock = FakeClock(NOW)
    verifier = make_verifier(clock=clock)
    token = hs(claims(exp=int(NOW) + 60))
    assert verifier.verify(token).user == "alice"
    assert len(verifier.cache) == 1
    clock.now = NOW + 60 + 31  # past exp plus leeway
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    assert caught.value.reason == "expired"


def test_the_cache_is_bounded() -> None:
    verifier = make_verifier(cache_size=3)
    for i in range(10):
        verifier.verify(hs(claims(sub=f"user-{i}")))
    assert len(verifier.cache) == 3


def test_a_rotated_secret_file_invalidates_cached_tokens(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    keys = key_source(secret_file=path)
    verifier = make_verifier(keys=keys)
    token = hs(claims())
    verifier.verify(token)
    path.write_bytes(b"a-brand-new-secret-that-is-long-enough-for-any-hmac-0123456789")
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the file system's resolution
    assert keys.refresh() is True
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    assert caught.value.reason == "bad_signature"


def test_an_unknown_kid_is_refused_at_once_and_never_fetched_on_the_request_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key())
    keys = key_source(jwks=path)
    verifier = make_verifier(keys=keys)
    reads: list[str] = []
    real = keys_module.fetch_jwks

    def counted(source: str, tls: Any = None) -> keys_module.Fetched:
        reads.append(source)
        return real(source, tls)

    monkeypatch.setattr(keys_module, "fetch_jwks", counted)
    with pytest.raises(TokenError) as caught:
        verifier.verify(signed(ec_key("ec-new"), "ES256", claims()))
    assert caught.value.reason == "unknown_kid"
    assert reads == []


def test_a_key_added_to_the_jwks_is_picked_up_in_the_background(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key())
    keys = key_source(jwks=path, clock=time.monotonic, refresh_min_s=0.05)
    verifier = make_verifier(keys=keys)
    newcomer = ec_key("ec-new")
    token = signed(newcomer, "ES256", claims())
    keys.start()
    try:
        with pytest.raises(TokenError):
            verifier.verify(token)
        write_jwks(path, rsa_key(), newcomer)

        def accepted() -> bool:
            try:
                return verifier.verify(token).user == "alice"
            except TokenError:
                return False  # each refusal asks for another refetch

        wait_until(accepted, what="the new key in use")
    finally:
        keys.stop()


def test_refetches_for_unknown_kids_are_rate_limited() -> None:
    clock = FakeClock(NOW)
    keys = key_source(SECRET, clock=clock)
    keys.refresh()
    assert keys.kid_refetch_wait() == 5.0
    clock.now += 4
    assert keys.kid_refetch_wait() == 1.0
    clock.now += 2
    assert keys.kid_refetch_wait() == 0.0


def test_a_removed_jwks_key_stops_working_after_a_refresh(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key(), ec_key())
    keys = key_source(jwks=path)
    verifier = make_verifier(keys=keys)
    token = signed(ec_key(), "ES256", claims())
    assert verifier.verify(token).user == "alice"
    write_jwks(path, rsa_key())
    assert keys.refresh() is True
    with pytest.raises(TokenError):
        verifier.verify(token)


def test_verification_is_cached_per_token() -> None:
    verifier = make_verifier()
    token = hs(claims())
    first = verifier.verify(token)
    assert verifier.verify(token) is first


# Claims an HMAC token may carry, each checked by our own reading of the claims (the signature
# already proven) as PyJWT's decode would check it: same accept or refuse, same reason.
CLAIM_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "audience_in_a_list": {"aud": ["other", "sidecar"]},
    "audience_list_without_ours": {"aud": ["other"]},
    "audience_not_strings": {"aud": [1, "sidecar"]},
    "audience_a_number": {"aud": 7},
    "no_audience": {"aud": None},
    "no_issuer": {"iss": None},
    "issuer_a_list": {"iss": ["https://issuer.test"]},
    "issuer_a_number": {"iss": 7},
    "subject_a_number": {"sub": 42},
    "jti_a_number": {"jti": 42},
    "jti_a_string": {"jti": "abc"},
    "no_exp": {"exp": None},
}
PYJWT_REASON = {
    jwt.InvalidAudienceError: "wrong_audience",
    jwt.InvalidIssuerError: "wrong_issuer",
    jwt.MissingRequiredClaimError: "missing_claim",
}


@pytest.mark.parametrize("name", sorted(CLAIM_CASES))
def test_hmac_claims_are_judged_as_pyjwt_would(name: str) -> None:
    token = hs_raw(claims(**CLAIM_CASES[name]), SECRET)  # PyJWT would not sign some of them
    try:
        jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            audience="sidecar",
            issuer="https://issuer.test",
            options={"require": ["exp"], "verify_exp": False, "verify_iat": False},
        )
        expected = "ok"
    except jwt.PyJWTError as err:
        expected = PYJWT_REASON.get(type(err), "malformed")
    try:
        make_verifier().verify(token)
        got = "ok"
    except TokenError as err:
        got = err.reason
    assert got == expected
