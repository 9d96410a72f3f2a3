"""Whom the decision core believes: a route policy only with a MAC made by a configured key
(`sidecar_shared.contract.sign`), and a client address only from a trusted caller."""

from __future__ import annotations

import logging
from pathlib import Path

import jwt
import pytest
from envoy.config.route.v3.route_components_pb2 import Route
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.core import LogThrottle
from ext_authz.decision import CheckInput, Outcome
from ext_authz.limits import trusted_caller
from ext_authz.tokens import TokenVerifier, VerifierSettings
from ext_authz.transports.grpc import peer_host
from ext_authz.transports.grpc import untrusted_peer as grpc_untrusted_peer
from ext_authz.transports.http import CheckProtocol
from ext_authz.transports.http import untrusted_peer as http_untrusted_peer
from sidecar_shared import contract
from sidecar_shared.contract import (
    POLICY_HEADER,
    POLICY_KEY,
    Limit,
    PolicyAuthError,
    RoutePolicy,
    read_policy_keys,
    sign,
    verify,
)
from sidecar_shared.errors import SettingsError
from tests.support import authz_config
from tests.support.authorizers import Wired, key_source, make_authorizer
from tests.support.authz_config import AUTHZ_FILTER
from tests.support.policies import POLICY_KEY as KEY
from tests.support.policies import encode
from xds_server import settings as xds_settings
from xds_server.resources.authz import per_route
from xds_server.resources.common import AuthzOptions

SECRET = b"policy-trust-test-secret-long-enough-0123456789"
NOW = 1_800_000_000.0
OTHER = b"another-key-that-is-long-enough-0123456789"
PUBLIC = RoutePolicy(service="status", public=True)


def make() -> Wired:
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET), lambda: NOW)
    return make_authorizer(verifier, lambda: NOW)


def check(wired: Wired, policy: str, untrusted_peer: str | None = None) -> Outcome:
    headers = {"x-forwarded-for": "198.51.100.7"}
    request = CheckInput("GET", "/s", headers, {POLICY_KEY: policy}, "198.51.100.7")
    request.untrusted_peer = untrusted_peer
    return wired.authorizer.check(request)


def test_a_signed_policy_verifies_under_its_key_and_any_other_listed() -> None:
    text = contract.encode(PUBLIC)
    assert verify(sign(text, KEY), [KEY]) == text
    assert verify(sign(text, KEY), [OTHER, KEY]) == text  # rotation: old and new overlap


@pytest.mark.parametrize(
    "signed",
    [
        contract.encode(PUBLIC),  # no MAC
        sign(contract.encode(PUBLIC), OTHER),  # another key's
        sign(contract.encode(PUBLIC), KEY).replace("true", "false"),  # altered after signing
        sign(contract.encode(PUBLIC), KEY)[:-1],  # truncated
        "s1.",
        "s1.no-dot",
        "s1.\u00e9\u00e9." + contract.encode(PUBLIC),  # not ASCII (a header read as latin-1)
        "s1..",
    ],
)
def test_anything_but_a_policy_signed_by_a_listed_key_is_refused(signed: str) -> None:
    with pytest.raises(PolicyAuthError):
        verify(signed, [KEY])


def test_with_no_key_every_policy_is_refused() -> None:
    with pytest.raises(PolicyAuthError):
        verify(sign(contract.encode(PUBLIC), KEY), [])


def test_a_key_file_holds_one_key_a_line_each_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"\n  {KEY.decode()}  \n\n{OTHER.decode()}\n")
    assert read_policy_keys(path) == (KEY, OTHER)
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="holds no key"):
        read_policy_keys(path)
    path.write_text(f"{KEY.decode()}\nshort\n")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        read_policy_keys(path)


def test_the_core_refuses_a_forged_public_policy_with_its_own_reason() -> None:
    wired = make()
    for forged in (contract.encode(PUBLIC), sign(contract.encode(PUBLIC), OTHER)):
        out = check(wired, forged)
        assert (out.status, out.reason) == (403, "policy_unauthenticated")
    assert check(wired, encode(PUBLIC)).allowed


def test_refused_policies_are_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wired = make()
    with caplog.at_level(logging.ERROR, logger="test"):
        for _ in range(100):
            check(wired, contract.encode(PUBLIC))
    lines = [r for r in caplog.records if r.getMessage() == "route policy not authenticated"]
    assert len(lines) == 1


def test_the_log_throttle_says_how_many_it_held_back() -> None:
    now = [0.0]
    throttle = LogThrottle(1.0, lambda: now[0])
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(3)] == [None, None, None]
    now[0] = 1.0
    assert throttle.ready() == 3


def test_only_loopback_envoy_or_an_authenticated_one_is_a_trusted_caller() -> None:
    assert trusted_caller("127.0.0.1", False) and trusted_caller("::1", False)
    assert trusted_caller("::ffff:127.0.0.1", False)
    assert not trusted_caller("127.0.0.2", False)
    assert not trusted_caller("10.0.0.5", False) and not trusted_caller("", False)
    assert trusted_caller("10.0.0.5", True)


def test_an_untrusted_callers_checks_count_against_its_own_address() -> None:
    wired = make()
    limited = encode(RoutePolicy(service="pub", public=True, rate_limit=Limit(2, 60)))
    from_remote = [check(wired, limited, untrusted_peer="10.9.9.9").status for _ in range(4)]
    assert from_remote == [200, 200, 429, 429]
    assert check(wired, limited).status == 200  # the address it named is untouched
    bad = {"authorization": "Bearer nope", "x-forwarded-for": "198.51.100.7"}
    orders = encode(RoutePolicy(service="orders", rbac_required=False))
    for _ in range(60):
        wired.authorizer.check(
            CheckInput("GET", "/o", bad, {POLICY_KEY: orders}, "198.51.100.7", None, "10.9.9.9")
        )
    good = {"authorization": "Bearer " + jwt.encode({"sub": "a", "exp": int(NOW) + 60}, SECRET)}
    assert check(wired, orders, untrusted_peer="10.9.9.9").status == 429  # its budget is spent
    out = wired.authorizer.check(
        CheckInput("GET", "/o", good, {POLICY_KEY: orders}, "198.51.100.7")
    )
    assert out.allowed  # the named address's is not


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[::ffff:127.0.0.1]:5000", "::ffff:127.0.0.1"),
        ("unix:/tmp/sock", ""),
        ("", ""),
    ],
)
def test_the_grpc_peer_string_gives_the_callers_address(peer: str, host: str) -> None:
    assert peer_host(peer) == host


class _Conn:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = b""

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_the_http_transport_believes_x_forwarded_for_only_from_loopback() -> None:
    wired = make()
    policy = encode(RoutePolicy(service="pub", public=True, rate_limit=Limit(1, 60)))
    raw = (
        f"GET /sidecar-check/x HTTP/1.1\r\nhost: x\r\n{POLICY_HEADER}: {policy}\r\n"
        "x-forwarded-for: 198.51.100.7\r\n\r\n"
    ).encode()

    def status(peer: tuple[str, int]) -> bytes:
        conn = _Conn(peer)
        protocol = CheckProtocol(wired.authorizer, set())
        protocol.connection_made(conn)  # type: ignore[arg-type]
        protocol.data_received(raw)
        return conn.written.split(b" ", 2)[1]

    assert [status(("10.0.0.5", 1)), status(("10.0.0.5", 2))] == [b"200", b"429"]
    assert status(("127.0.0.1", 3)) == b"200"  # the victim's own budget is whole
    assert status(("::1", 4)) == b"429"  # (the same client, through a loopback Envoy)


class _Tls:
    def __init__(self, cert: dict[str, object]) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, object]:
        return self.cert


class _TlsConn:
    def __init__(self, host: str, cert: dict[str, object]) -> None:
        self.extra = {"peername": (host, 1), "ssl_object": _Tls(cert)}

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)


def test_a_caller_with_a_verified_client_certificate_is_trusted_from_anywhere() -> None:
    verified = _TlsConn("10.0.0.5", {"subject": ((("commonName", "envoy"),),)})
    assert http_untrusted_peer(verified) is None  # type: ignore[arg-type]
    unverified = _TlsConn("10.0.0.5", {})  # TLS without a verified certificate
    assert http_untrusted_peer(unverified) == "10.0.0.5"  # type: ignore[arg-type]


class _Context:
    def __init__(self, peer: str, identities: list[bytes] | None) -> None:
        self._peer = peer
        self._identities = identities

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> list[bytes] | None:
        return self._identities


def test_a_grpc_caller_is_trusted_on_loopback_or_with_a_verified_certificate() -> None:
    assert grpc_untrusted_peer(_Context("ipv4:127.0.0.1:5000", None)) is None
    assert grpc_untrusted_peer(_Context("ipv6:[::1]:5000", None)) is None
    assert grpc_untrusted_peer(_Context("ipv4:127.0.0.2:5000", None)) == "127.0.0.2"
    assert grpc_untrusted_peer(_Context("ipv4:10.0.0.5:5000", [b"envoy"])) is None


def test_the_xds_server_signs_each_routes_policy_with_the_first_key_of_its_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY.decode()}\n{OTHER.decode()}\n")
    conf = xds_settings.parse(["--policy-key-file", str(path)], environ={})
    assert conf.translate.authz.policy_key == KEY
    assert KEY.decode() not in repr(conf)
    text = contract.encode(PUBLIC)
    for transport in ("http", "grpc"):
        options = AuthzOptions(transport=transport, policy_key=conf.translate.authz.policy_key)
        route = Route()
        route.typed_per_filter_config[AUTHZ_FILTER].Pack(per_route(options, "status", text))
        assert verify(authz_config.route_policy(route), [KEY]) == text
    assert xds_settings.parse([], environ={}).translate.authz.policy_key == b""
    path.write_text("short\n")
    with pytest.raises(SettingsError, match="policy-key-file"):
        xds_settings.parse(["--policy-key-file", str(path)], environ={})


SIGNED_PUBLIC = encode(PUBLIC)
FUZZ = make()
policies = st.one_of(
    st.text(max_size=200),
    st.builds(lambda t: "s1." + t, st.text(max_size=200)),
    st.builds(lambda t: f"s1.{t}.{contract.encode(PUBLIC)}", st.text(max_size=60)),
    st.builds(
        lambda i, c: SIGNED_PUBLIC[:i] + c + SIGNED_PUBLIC[i + 1 :],
        st.integers(0, len(SIGNED_PUBLIC) - 1),
        st.characters(),
    ),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(policy=policies)
def test_only_the_signed_policy_itself_is_believed_and_nothing_else_raises(policy: str) -> None:
    out = check(FUZZ, policy)
    if policy == SIGNED_PUBLIC:
        assert out.allowed
    else:
        assert (out.status, out.reason) in ((403, "policy_unauthenticated"), (403, "no_policy"))
