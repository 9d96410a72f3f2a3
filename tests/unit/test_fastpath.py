"""The decision core's fast path for cached allows answers exactly as the general core: for any
sequence of checks, clock moves, key rotations and policy changes, two authorizers (one with
the fast path, one without) give the same outcomes, the same HTTP answers byte for byte, the
same metrics, token-cache counts and audit lines."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from typing import Any, cast

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer, LimitSettings
from ext_authz.decision import CheckInput, Outcome
from ext_authz.keys import KeySet, KeySource
from ext_authz.metrics import AuthzMetrics
from ext_authz.observers import AuditObserver, MetricsObserver, ProxyHint, TracingObserver
from ext_authz.ratelimit import GuardedLimiter, MemoryLimiter
from ext_authz.tokens import TokenVerifier, VerifierSettings
from ext_authz.transports.http import CheckProtocol, encode_outcome, encode_quick
from sidecar_shared.contract import CHECK_PATH_PREFIX, POLICY_HEADER, POLICY_KEY, Limit, RoutePolicy
from tests.support.fakes import FakeClock, FakeTransport
from tests.support.policies import POLICY_KEY as POLICY_MAC_KEY
from tests.support.policies import encode

NOW = 1_800_000_000.0
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SECRETS = (
    b"fast-path-secret-one-long-enough-0123456789",
    b"fast-path-secret-two-long-enough-9876543210",
)

ORDERS = RoutePolicy(
    service="orders",
    allowed_roles={"read": frozenset({"reader"}), "write": frozenset({"writer"})},
    tenant_upstreams=frozenset({"acme"}),
    rate_limit=Limit(limit=3, window_s=1, burst=1),
)
POLICIES = [
    ORDERS,
    RoutePolicy(service="orders", allowed_roles={"read": frozenset({"reader"})}),  # no limit
    RoutePolicy(
        service="billing",
        allowed_roles={"read": frozenset({"reader", "writer"}), "write": frozenset({"writer"})},
        tenant_scope="tenant",
        method_override=True,
        rate_limit=Limit(limit=2, window_s=60),
        limit_name="billing.export",
    ),
    RoutePolicy(service="status", public=True, rate_limit=Limit(limit=2, window_s=1)),
]
# (user, roles, tenant, seconds to exp)
IDENTITIES = [
    ("alice", ["reader"], None, 600),
    ("bob", ["writer", "reader"], "acme", 600),
    ("carol,%é", ["reader"], "globex", 3),  # encoded identity headers; expires soon
    ("dave", ["auditor"], None, 600),  # no role that the policies allow
]


class RotatingKeys:
    """What the verifier reads of a `KeySource`: the current HMAC secret, rotated at will."""

    def __init__(self) -> None:
        self.keys = KeySet(SECRETS[0], {}, 0)

    def current(self) -> KeySet:
        return self.keys

    def unknown_kid(self, kid: str | None = None) -> None:
        """No JWKS here."""

    def rotate(self) -> None:
        secret = SECRETS[(self.keys.generation + 1) % 2]
        self.keys = KeySet(secret, {}, self.keys.generation + 1)


class Side:
    """One authorizer with real observers (metrics, audit of every decision, proxy hint,
    tracing), its own keys, limiter and verifier (a token cache of 3: tokens are evicted) on
    a shared clock."""

    def __init__(self, clock: FakeClock, fast: bool, proxy_hint_checks: int) -> None:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

        self.keys = RotatingKeys()
        self.verifier = TokenVerifier(
            VerifierSettings(leeway_s=2, cache_size=3), cast(KeySource, self.keys), clock
        )
        self.audit = io.StringIO()
        self.audit_log = AuditLog(self.audit, 1.0)
        self.registry = CollectorRegistry()
        log = logging.getLogger("test")
        self.authorizer = Authorizer(
            self.verifier,
            GuardedLimiter(MemoryLimiter(clock=clock), fail_open=True, log=log),
            [
                MetricsObserver(AuthzMetrics(self.registry)),
                AuditObserver(self.audit_log),
                ProxyHint(0, log, checks=proxy_hint_checks),
                TracingObserver(TracerProvider().get_tracer("test")),
            ],
            log,
            clock,
            LimitSettings(),
            policy_keys=(POLICY_MAC_KEY,),
            fast_path=fast,
        )
        self.quick = 0  # answers the fast path gave, whichever way in
        allow_prepared = self.authorizer.allow_prepared

        def counted(*args: Any) -> Any:
            answer = allow_prepared(*args)
            self.quick += answer is not None
            return answer

        self.authorizer.allow_prepared = counted  # type: ignore[method-assign,assignment]
        self.wire = FakeTransport()
        self.connection = CheckProtocol(self.authorizer, set())
        self.connection.connection_made(self.wire)  # type: ignore[arg-type]

    def answer(
        self, req: CheckInput, via: str, trace_parent: str | None = None
    ) -> tuple[Outcome | None, bytes]:
        """The answer through the HTTP transport (`via` "http": its bytes only), or through
        the core (`allow_quickly`, else the general path) and `encode_outcome`."""
        if via == "http":
            self.wire.written = b""
            self.connection.data_received(request_bytes(req))
            return None, self.wire.written
        if via == "check":  # the gRPC transport's way in, with Envoy's trace context
            checked = self.authorizer.check(replace(req, trace_parent=trace_parent))
            return checked, encode_outcome(checked)
        quick = self.authorizer.allow_quickly(
            req.method,
            req.path,
            req.headers,
            req.context.get(POLICY_KEY, ""),
            req.client_ip,
            req.untrusted_peer,
            req.trace_parent,
        )
        if quick is not None:
            prepared, request_id, remaining, reset_s = quick
            return prepared.outcome(request_id, remaining, reset_s), encode_quick(quick)
        outcome = self.authorizer.check_or_defer(req, quick=False)
        assert isinstance(outcome, Outcome)
        return outcome, encode_outcome(outcome)

    def observed(self) -> tuple[list[Any], list[dict[str, Any]], tuple[int, int]]:
        samples = sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in self.registry.collect()
            for s in family.samples
            if (
                not s.name.endswith("_created")
                and not s.name.startswith("ext_authz_check_duration_seconds_")
            )
            or s.name == "ext_authz_check_duration_seconds_count"
        )
        self.audit_log.flush()
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        for line in lines:
            line.pop("latency_us", None)
        cache = self.verifier.cache
        return samples, lines, (cache.hits, cache.misses)


def request_bytes(req: CheckInput) -> bytes:
    """The check request Envoy's HTTP ext_authz client would send for `req`."""
    lines = [f"{req.method} {CHECK_PATH_PREFIX}{req.path} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    lines.append(f"{POLICY_HEADER}: {req.context[POLICY_KEY]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def token(identity: int, secret: bytes, now: float) -> str:
    user, roles, tenant, ttl = IDENTITIES[identity]
    claims: dict[str, Any] = {"sub": user, "roles": roles, "exp": int(now) + ttl}
    if tenant is not None:
        claims["tenant_id"] = tenant
    return jwt.encode(claims, secret, "HS256")


requests = st.fixed_dictionaries(
    {
        "identity": st.integers(0, len(IDENTITIES) - 1),
        "signed_with": st.sampled_from(["current", "other"]),
        "policy": st.integers(0, len(POLICIES) - 1),
        "method": st.sampled_from(["GET", "GET", "POST", "DELETE", "BREW"]),
        "tenant": st.sampled_from([None, None, "acme", "globex", ""]),
        "override": st.sampled_from([None, None, "POST", "GET"]),
        "request_id": st.sampled_from(["rid-1", "rid-%2", "rïd"]),
        "traceparent": st.sampled_from([None, None, UNSAMPLED, SAMPLED]),
        "forwarded": st.sampled_from(["10.0.0.1", "10.0.0.2"]),
        "via": st.sampled_from(["http", "http", "core", "check"]),
        "envoy_trace": st.sampled_from([None, UNSAMPLED, SAMPLED, "00-bad"]),
        # a header whose commas may be lines of their own: around the room for identity
        "commas": st.sampled_from([0, 0, 0, 89, 90, 91, 92, 93]),
    }
)
steps = st.one_of(
    requests.map(lambda r: ("check", r)),
    st.sampled_from([0.001, 0.1, 0.35, 1.0, 2.5, 61.0]).map(lambda s: ("advance", s)),
    st.just(("rotate", None)),
)


def check_input(r: dict[str, Any], tokens: dict[tuple[int, bytes], str], keys: KeySet) -> Any:
    secret = (
        keys.secret
        if r["signed_with"] == "current"
        else SECRETS[1]
        if keys.secret == SECRETS[0]
        else SECRETS[0]
    )
    assert secret is not None
    headers = {
        "authorization": f"Bearer {tokens[(r['identity'], secret)]}",
        "x-request-id": r["request_id"],
        "x-forwarded-for": r["forwarded"],
    }
    if r["tenant"] is not None:
        headers["x-tenant-id"] = r["tenant"]
    if r["override"] is not None:
        headers["x-http-method-override"] = r["override"]
    if r["traceparent"] is not None:
        headers["traceparent"] = r["traceparent"]
    if r.get("commas"):
        headers["x-list"] = "a," * r["commas"] + "a"
    context = {POLICY_KEY: encode(POLICIES[r["policy"]])}
    return lambda: CheckInput(
        r["method"], "/x?q=1", dict(headers), context, r["forwarded"], None, None
    )


def replay(script: list[tuple[str, Any]], proxy_hint_checks: int = 0) -> tuple[Side, Side]:
    clock = FakeClock(NOW)
    general, fast = Side(clock, False, proxy_hint_checks), Side(clock, True, proxy_hint_checks)
    tokens: dict[tuple[int, bytes], str] = {}
    for i in range(len(IDENTITIES)):  # minted once: a token's exp counts from the start
        for secret in SECRETS:
            tokens[(i, secret)] = token(i, secret, NOW)
    for kind, arg in script:
        if kind == "advance":
            clock.now += arg
        elif kind == "rotate":
            general.keys.rotate()
            fast.keys.rotate()
        else:
            make = check_input(arg, tokens, general.keys.keys)
            trace = arg.get("envoy_trace")
            assert general.answer(make(), arg["via"], trace) == fast.answer(
                make(), arg["via"], trace
            ), arg
    assert general.observed() == fast.observed()
    return general, fast


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, min_size=1, max_size=60))
def test_the_fast_path_answers_exactly_as_the_general_core(script: list[tuple[str, Any]]) -> None:
    replay(script)


@pytest.mark.parametrize("via", ["core", "http", "check"])
def test_repeated_checks_are_answered_by_the_fast_path_until_something_changes(via: str) -> None:
    base = {
        "identity": 0,
        "signed_with": "current",
        "policy": 0,
        "method": "GET",
        "tenant": None,
        "override": None,
        "request_id": "rid-1",
        "traceparent": None,
        "forwarded": "10.0.0.1",
        "via": via,
    }
    again = [("check", base)] * 5  # capacity 4: the fifth is a 429 from the general core
    script = [
        *again,
        ("advance", 1.1),  # a window and a bucket: nothing counted any more
        *again,
        ("advance", 1.1),
        ("rotate", None),
        ("check", base),  # keys changed: the general core verifies again...
        ("check", base),  # ...and prepares it anew
        ("advance", 1.0),
        ("check", {**base, "identity": 2}),
        ("check", {**base, "identity": 2}),
        ("advance", 4.0),  # past exp + leeway: 401 from the general core
        ("check", {**base, "identity": 2}),
    ]
    general, fast = replay(script)
    assert general.quick == 0
    # 1 prepares, 3 fast, the 429 general; 4 fast, the 429; 1 after rotation; 1 for carol
    assert fast.quick == 3 + 4 + 1 + 1
    statuses = [json.loads(line)["status"] for line in fast.audit.getvalue().splitlines()]
    assert statuses == [200] * 4 + [429] + [200] * 4 + [429] + [200] * 4 + [401]


def test_allows_are_sampled_at_the_configured_rate_with_one_draw_per_written_allow() -> None:
    import random  # noqa: PLC0415

    draws = 0
    source = random.Random(7)

    def rand() -> float:
        nonlocal draws
        draws += 1
        return source.random()

    log = AuditLog(io.StringIO(), 0.05, rand=rand)
    written = sum(log.wants(True) for _ in range(100_000))
    assert 4_500 < written < 5_500  # 5 %; the binomial's sd is 69
    assert draws == written + 1  # the first gap, then one per written allow
    assert all(log.wants(False) for _ in range(10))  # every denial


def test_an_answer_is_not_used_once_its_token_left_the_token_cache() -> None:
    base = {
        "identity": 0,
        "signed_with": "current",
        "policy": 1,
        "method": "GET",
        "tenant": None,
        "override": None,
        "request_id": "rid-1",
        "traceparent": None,
        "forwarded": "10.0.0.1",
        "via": "http",
    }
    others = [("check", {**base, "identity": i}) for i in (1, 2, 3)]  # a cache of 3: alice goes
    _, fast = replay([("check", base), ("check", base), *others, ("check", base)])
    assert fast.quick == 1  # the second check only: the last is verified again
    assert fast.verifier.cache.misses == 5


@pytest.mark.parametrize("via", ["http", "check"])
def test_the_room_for_identity_headers_is_checked_per_request(via: str) -> None:
    base = {
        "identity": 0,
        "signed_with": "current",
        "policy": 1,
        "method": "GET",
        "tenant": None,
        "override": None,
        "request_id": "rid-1",
        "traceparent": None,
        "forwarded": "10.0.0.1",
        "via": via,
    }
    # 3 headers + x-list: 96 lines with 92 commas (the room: 100 - 4 identity headers)
    script = [("check", base), ("check", {**base, "commas": 92}), ("check", {**base, "commas": 93})]
    _, fast = replay(script)
    statuses = [json.loads(line)["status"] for line in fast.audit.getvalue().splitlines()]
    assert statuses == [200, 200, 431]
    assert fast.quick == 1


def test_what_fails_in_the_fast_path_is_logged_and_left_to_the_general_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(NOW)
    side = Side(clock, True, 0)

    def broken(service: str | None, limited: bool, latency_us: int) -> bool:
        raise RuntimeError("a bug")

    metrics = side.authorizer._counts[0]
    metrics.observe_allow = broken  # type: ignore[method-assign]
    tokens = {(0, SECRETS[0]): token(0, SECRETS[0], NOW)}
    base = {"identity": 0, "signed_with": "current", "policy": 1, "method": "GET"}
    make = check_input(
        {**base, "tenant": None, "override": None, "request_id": "rid-1", "traceparent": None}
        | {"forwarded": "10.0.0.1"},
        tokens,
        side.keys.keys,
    )
    assert side.authorizer.check(make()).status == 200  # prepares
    assert side.authorizer.check(make()).status == 200  # the fast path fails: the general path
    assert side.quick == 0
    assert "fast path failed" in caplog.text
