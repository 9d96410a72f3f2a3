"""A token is read one way or refused: duplicate names, deep nesting, invalid Unicode and a byte
order mark are `malformed` 401s (remembered, never a 500); a null roles claim means no roles;
a `kid` is a whole string; weak keys in a JWKS are refused when it is loaded."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from prometheus_client import CollectorRegistry

from ext_authz.decision import CheckInput, Outcome
from ext_authz.keys import KID, KeyConfigError, KeySettings, KeySource, parse_jwks
from ext_authz.metrics import KeyMetrics
from ext_authz.tokens import MAX_DEPTH, TokenError, TokenVerifier, VerifierSettings
from ext_authz.transports.http import CheckProtocol
from sidecar_shared.contract import POLICY_HEADER, POLICY_KEY, RoutePolicy
from tests.support.authorizers import key_source, make_authorizer
from tests.support.fakes import FakeClock, FakeTransport
from tests.support.keys import rsa_key, write_jwks
from tests.support.policies import encode

SECRET = b"token-reading-test-secret-long-enough-0123456789"
NOW = 1_800_000_000.0
EXP = int(NOW) + 600
ADMIN_ONLY = RoutePolicy(
    service="orders", rbac_required=True, allowed_roles={"read": frozenset({"admin"})}
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_hs(payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> str:
    """An HS256 token over exactly these header and payload bytes."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def verifier(keys: KeySource | None = None) -> TokenVerifier:
    return TokenVerifier(VerifierSettings(), keys or key_source(SECRET), FakeClock(NOW))


def check(v: TokenVerifier, token: str, policy: RoutePolicy = ADMIN_ONLY) -> Outcome:
    auth = make_authorizer(v, FakeClock(NOW)).authorizer
    return auth.check(
        CheckInput(
            method="GET",
            path="/orders/1",
            headers={"authorization": f"Bearer {token}"},
            context={POLICY_KEY: encode(policy)},
        )
    )


def refused(token: str, v: TokenVerifier | None = None) -> TokenError:
    with pytest.raises(TokenError) as caught:
        (v or verifier()).verify(token)
    return caught.value


# 1. Duplicate names


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"alice","sub":"admin","exp":%d}' % EXP,
        b'{"sub":"alice","roles":["customer"],"roles":"admin","exp":%d}' % EXP,
        b'{"sub":"alice","exp":%d,"realm":{"r":1,"r":2}}' % EXP,
    ],
)
def test_a_payload_naming_a_claim_twice_is_malformed(payload: bytes) -> None:
    out = check(verifier(), raw_hs(payload))
    assert (out.status, out.reason) == (401, "malformed")


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"HS256","alg":"HS256"}',
        b'{"alg":"none","alg":"HS256"}',
        b'{"alg":"HS256","kid":"a","kid":"b"}',
    ],
)
def test_a_jose_header_naming_a_member_twice_is_malformed(header: bytes) -> None:
    payload = b'{"sub":"alice","roles":["admin"],"exp":%d}' % EXP
    assert refused(raw_hs(payload, header)).reason == "malformed"


def test_an_asymmetric_token_naming_a_claim_twice_is_malformed(tmp_path: Path) -> None:
    pair = rsa_key()
    keys = key_source(None, write_jwks(tmp_path / "jwks.json", pair))
    header = b'{"alg":"RS256","kid":"%s"}' % pair.kid.encode()
    payload = b'{"sub":"alice","sub":"admin","exp":%d}' % EXP
    signing_input = f"{b64(header)}.{b64(payload)}"
    sig = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), pair.private)
    assert refused(f"{signing_input}.{b64(sig)}", verifier(keys)).reason == "malformed"
    # The same token without the duplicate is accepted: the signature path reads it.
    payload = b'{"sub":"alice","exp":%d}' % EXP
    signing_input = f"{b64(header)}.{b64(payload)}"
    sig = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), pair.private)
    assert verifier(keys).verify(f"{signing_input}.{b64(sig)}").user == "alice"


# 2. A null roles claim


def test_a_null_roles_claim_means_no_roles_never_the_legacy_role_claim() -> None:
    token = jwt.encode({"sub": "alice", "roles": None, "role": "admin", "exp": EXP}, SECRET)
    assert verifier().verify(token).roles == ()
    out = check(verifier(), token)
    assert (out.status, out.reason) == (403, "role_not_allowed")
    # Without any roles claim, the legacy `role` still counts.
    legacy = jwt.encode({"sub": "alice", "role": "admin", "exp": EXP}, SECRET)
    assert verifier().verify(legacy).roles == ("admin",)


# 3. Nesting and invalid Unicode


def test_a_deeply_nested_payload_is_malformed_and_remembered() -> None:
    deep = b'{"sub":"alice","exp":%d,"x":%s1%s}' % (EXP, b"[" * 2900, b"]" * 2900)
    v = verifier()
    token = raw_hs(deep)
    out = check(v, token)
    assert (out.status, out.reason) == (401, "malformed")
    assert len(v.refused) == 1  # a replay costs a lookup
    assert refused(token, v).reason == "malformed"


def test_nesting_up_to_the_limit_is_read_and_brackets_in_strings_do_not_count() -> None:
    inner = b"[" * (MAX_DEPTH - 1) + b"1" + b"]" * (MAX_DEPTH - 1)
    ok = b'{"sub":"alice","exp":%d,"x":%s,"s":"%s"}' % (EXP, inner, b"[{" * 40)
    assert verifier().verify(raw_hs(ok)).user == "alice"
    too_deep = b'{"sub":"alice","exp":%d,"x":[%s]}' % (EXP, inner)
    assert refused(raw_hs(too_deep)).reason == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"al\\ud800ice","exp":%d}' % EXP,  # a lone high surrogate
        b'{"sub":"alice\\udc00","exp":%d}' % EXP,  # a lone low surrogate
        b'{"sub":"alice","exp":%d,"n":{"\\ud83d":1}}' % EXP,  # in a name, anywhere
        b'{"sub":"al\xed\xa0\x80ice","exp":%d}' % EXP,  # an encoded surrogate (not UTF-8)
        b'{"sub":"al\xffice","exp":%d}' % EXP,  # not UTF-8
        b'\xef\xbb\xbf{"sub":"alice","exp":%d}' % EXP,  # a byte order mark
    ],
)
def test_invalid_unicode_and_a_byte_order_mark_are_malformed(payload: bytes) -> None:
    assert refused(raw_hs(payload)).reason == "malformed"


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    token = raw_hs(b'{"sub":"al\\ud83d\\ude00ice","exp":%d}' % EXP)
    assert verifier().verify(token).user == "al\U0001f600ice"


def test_a_lone_surrogate_is_a_401_from_the_http_transport_and_the_connection_stays() -> None:
    auth = make_authorizer(verifier(), FakeClock(NOW)).authorizer
    protocol = CheckProtocol(auth, set())
    sink = FakeTransport()
    protocol.connection_made(sink)  # type: ignore[arg-type]
    policy = encode(RoutePolicy(service="orders", rbac_required=False))
    token = raw_hs(b'{"sub":"al\\ud800ice","exp":%d}' % EXP)
    lines = ["GET /sidecar-check/orders/1 HTTP/1.1", "host: ext_authz"]
    lines += [f"{POLICY_HEADER}: {policy}", f"authorization: Bearer {token}"]
    protocol.data_received(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert sink.written.startswith(b"HTTP/1.1 401 "), sink.written[:80]
    assert not sink.closed


# 5. The kid is a whole string


def test_a_kid_with_a_trailing_newline_is_refused_without_a_refetch(tmp_path: Path) -> None:
    assert KID.fullmatch("rsa-1") and not KID.fullmatch("rsa-1\n")
    pair = rsa_key()
    keys = key_source(None, write_jwks(tmp_path / "jwks.json", pair))
    asked: list[str | None] = []
    keys.unknown_kid = asked.append  # type: ignore[method-assign,assignment]
    token = jwt.encode({"sub": "alice", "exp": EXP}, pair.private, "RS256", {"kid": "rsa-1\n"})
    assert refused(token, verifier(keys)).reason == "unknown_kid"
    assert asked == []  # refused as not a kid at all: no JWKS refetch


def test_a_jwks_kid_with_a_trailing_newline_is_refused() -> None:
    jwk = {**rsa_key().public_jwk, "kid": "rsa-1\n"}
    with pytest.raises(KeyConfigError, match="kid"):
        parse_jwks({"keys": [jwk]})


# 6. Weak keys and a byte order mark


def _weak_rsa() -> tuple[Any, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**jwk, "kid": "weak-rsa", "use": "sig"}


def _secp256k1() -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP256K1())
    return {**json.loads(ECAlgorithm.to_jwk(private.public_key())), "kid": "k1-curve"}


def test_weak_keys_are_refused_at_load_logged_once_with_the_kid_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private, weak = _weak_rsa()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_key().public_jwk, weak, _secp256k1()]}))
    registry = CollectorRegistry()
    keys = KeySource(
        KeySettings(jwks=str(path)), logging.getLogger("weak"), metrics=KeyMetrics(registry)
    )
    with caplog.at_level(logging.WARNING, "weak"):
        keys.load()
        keys.refresh()  # the same JWKS again: nothing new to say
    assert sorted(keys.current().jwks) == ["rsa-1"]
    warned = [r for r in caplog.records if r.name == "weak"]
    assert sorted(r.fields["kid"] for r in warned) == ["k1-curve", "weak-rsa"]  # type: ignore[attr-defined]
    assert registry.get_sample_value("ext_authz_jwks_weak_keys_total") == 2
    # Signed by hand: PyJWT warns before signing with a short key, an attacker does not.
    header, payload = b'{"alg":"RS256","kid":"weak-rsa"}', b'{"sub":"a","exp":%d}' % EXP
    signing_input = f"{b64(header)}.{b64(payload)}"
    sig = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), private)
    assert refused(f"{signing_input}.{b64(sig)}", verifier(keys)).reason == "unknown_kid"


def test_a_byte_order_mark_before_the_header_is_malformed() -> None:
    payload = b'{"sub":"alice","exp":%d}' % EXP
    assert refused(raw_hs(payload, b'\xef\xbb\xbf{"alg":"HS256"}')).reason == "malformed"
