"""Property: whatever arrives in a CheckRequest, Check answers, and only a validly signed token
is ever allowed."""

from __future__ import annotations

import jwt
from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.core import GuardSettings
from ext_authz.tokens import TokenVerifier, VerifierSettings
from ext_authz.transports.grpc import to_input, to_response
from sidecar_shared.contract import POLICY_KEY, RoutePolicy
from tests.support.authorizers import key_source, make_authorizer
from tests.support.policies import encode

SECRET = b"fuzz-test-secret-that-is-long-enough-0123456789"
NOW = 1_800_000_000.0
VALID = jwt.encode({"sub": "u", "roles": ["r"], "exp": int(NOW) + 60}, SECRET, "HS256")
FORGED = jwt.encode({"sub": "u", "roles": ["r"], "exp": int(NOW) + 60}, b"x" * 40, "HS256")
POLICY = encode(RoutePolicy(service="svc", allowed_roles={"read": frozenset({"r"})}))

AUTH = make_authorizer(
    TokenVerifier(VerifierSettings(cache_size=64), key_source(SECRET), lambda: NOW),
    lambda: NOW,
    guard=GuardSettings(failure_budget=0),  # every try is checked, none refused for its count
).authorizer

segment = st.text(alphabet="ABCDEFabcdef0123456789-_=+/.$%", max_size=40)
tokens = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", segment, segment, segment),
    st.sampled_from([FORGED, VALID[:-3], VALID + "x", VALID.replace(".", "..", 1)]),
    st.builds(
        lambda i, t: t[:i] + "A" + t[i + 1 :], st.integers(0, len(VALID) - 1), st.just(VALID)
    ),
)
authorization = st.one_of(
    st.builds(lambda t: f"Bearer {t}", tokens),
    st.builds(lambda t: f"bearer  {t} ", tokens),
    st.text(max_size=100),
)
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
headers = st.dictionaries(header_names, st.text(max_size=50), max_size=8)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    headers=headers,
    auth=st.one_of(st.none(), authorization),
    method=st.sampled_from(["GET", "POST", "DELETE", "BREW", ""]),
    path=st.text(max_size=60),
    with_policy=st.booleans(),
)
def test_check_never_raises_and_never_allows_a_bad_signature(
    headers: dict[str, str], auth: str | None, method: str, path: str, with_policy: bool
) -> None:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = method
    http.path = path
    http.headers.update(headers)
    if auth is not None:
        http.headers["authorization"] = auth
    if with_policy:
        request.attributes.context_extensions[POLICY_KEY] = POLICY
    response = to_response(AUTH.check(to_input(request)))
    if response.HasField("ok_response"):
        assert response.status.code == 0
        assert auth is not None and VALID in auth and with_policy
        assert auth.split()[1] == VALID
    else:
        assert response.status.code != 0
        assert response.denied_response.status.code in (401, 403)


def test_the_valid_token_is_allowed_so_the_property_can_fail() -> None:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = "GET"
    http.headers["authorization"] = f"Bearer {VALID}"
    request.attributes.context_extensions[POLICY_KEY] = POLICY
    assert to_response(AUTH.check(to_input(request))).HasField("ok_response")
