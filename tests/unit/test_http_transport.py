"""The HTTP transport's protocol, fed bytes as Envoy would send them (no sockets): keep-alive,
pipelining, the policy header, bounds, garbage, and answers that wait for Redis."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import jwt

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer
from ext_authz.observers import AuditObserver
from ext_authz.ratelimit import (
    GuardedAsyncLimiter,
    GuardedLimiter,
    Limit,
    LimitDecision,
    MemoryLimiter,
)
from ext_authz.tokens import TokenVerifier, VerifierSettings
from ext_authz.transports.http import REQUEST_TIMEOUT_S, CheckProtocol, Ticker, time_out_stalled
from sidecar_shared.contract import POLICY_HEADER, RoutePolicy
from tests.support.authorizers import key_source, make_authorizer
from tests.support.fakes import FakeTransport
from tests.support.policies import POLICY_KEY, encode

SECRET = b"http-transport-test-secret-long-enough-0123456789"
NOW = 1_800_000_000.0
POLICY = encode(RoutePolicy(service="orders", rbac_required=False, rate_limit=Limit(100, 60)))


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(NOW) + 60}, SECRET, "HS256")


def request(path: str = "/orders/1", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET /sidecar-check{path} HTTP/1.1", "host: ext_authz"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check(user: str | None, **extra: str) -> bytes:
    headers = {POLICY_HEADER: POLICY, "x-forwarded-for": "203.0.113.9", **extra}
    if user is not None:
        headers["authorization"] = f"Bearer {token(user)}"
    return request(headers=headers)


def connect(authorizer: Authorizer) -> tuple[CheckProtocol, FakeTransport]:
    protocol = CheckProtocol(authorizer, set())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of HTTP/1.1 responses (each with content-length)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        length = int(headers["content-length"])
        out.append((int(status_line.split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


def wired() -> tuple[Authorizer, io.StringIO, AuditLog]:
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET), lambda: NOW)
    w = make_authorizer(verifier, lambda: NOW)
    assert w.audit_log is not None
    return w.authorizer, w.audit, w.audit_log


def test_pipelined_checks_on_one_connection_are_answered_in_order() -> None:
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    protocol.data_received(check("alice") + check(None) + check("bob"))
    (first, second, third) = responses(transport.written)
    assert first[0] == 200 and first[1]["x-user-id"] == "alice"
    assert first[1]["x-envoy-auth-headers-to-remove"] == "x-tenant-id,x-tenant-upstream"
    assert first[1]["ratelimit-policy"] == '"orders";q=100;w=60'
    assert second[0] == 401 and json.loads(second[2])["error"] == "invalid_token"
    assert second[1]["www-authenticate"].startswith("Bearer ")
    assert third[0] == 200 and third[1]["x-user-id"] == "bob"
    assert not transport.closed  # keep-alive


def test_a_request_split_across_reads_is_one_check() -> None:
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    raw = check("alice")
    for i in range(0, len(raw), 7):
        protocol.data_received(raw[i : i + 7])
    ((status, headers, _),) = responses(transport.written)
    assert (status, headers["x-user-id"]) == (200, "alice")


def test_the_route_policy_comes_from_its_header_and_the_path_loses_the_prefix() -> None:
    authorizer, audit, log = wired()
    protocol, transport = connect(authorizer)
    protocol.data_received(check(None, **{"x-request-id": "rid-7"}))
    protocol.data_received(request("/orders/2", {"authorization": f"Bearer {token('a')}"}))
    (denied, no_policy) = responses(transport.written)
    assert denied[0] == 401
    assert no_policy[0] == 403  # no policy header: fail closed
    log.flush()
    records = [json.loads(line) for line in audit.getvalue().splitlines()]
    first = records[0]
    assert (first["request_id"], first["service"], first["path"]) == (
        "rid-7",
        "orders",
        "/orders/1",
    )
    assert records[1]["reason"] == "no_policy"


def test_garbage_is_a_400_with_a_json_body_and_the_connection_closes() -> None:
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    protocol.data_received(b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n")
    ((status, headers, body),) = responses(transport.written)
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"] == "bad_request"
    assert transport.closed


def test_a_check_after_good_ones_that_is_garbage_still_gets_the_good_answers_first() -> None:
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    protocol.data_received(check("alice") + b"NOT HTTP AT ALL\r\n\r\n")
    assert [r[0] for r in responses(transport.written)] == [200, 400]
    assert transport.closed


def test_a_request_above_the_size_bound_is_431_and_closes() -> None:
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    protocol.data_received(check("alice", **{"x-big": "a" * 200_000}))
    ((status, _, body),) = responses(transport.written)
    assert status == 431 and json.loads(body)["error"] == "headers_too_large"
    assert transport.closed
    protocol, transport = connect(authorizer)
    protocol.data_received(check("alice", **{f"x-h{i}": "v" for i in range(300)}))
    assert [r[0] for r in responses(transport.written)] == [431]


def test_connection_close_is_honoured_after_the_answer() -> None:
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    protocol.data_received(check("alice", connection="close"))
    ((status, headers, _),) = responses(transport.written)
    assert (status, headers["connection"]) == (200, "close")
    assert transport.closed


def test_an_upgrade_request_is_a_check_answered_once_on_a_connection_kept_open() -> None:
    # Envoy forwards a websocket request's Connection and Upgrade headers to the check.
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    upgrade = {"connection": "Upgrade", "upgrade": "websocket"}
    protocol.data_received(check("alice", **upgrade) + check("bob", **upgrade))
    protocol.data_received(check("carol"))
    answers = responses(transport.written)
    assert [(status, headers["x-user-id"]) for status, headers, _ in answers] == [
        (200, "alice"),
        (200, "bob"),
        (200, "carol"),
    ]
    assert all("connection" not in headers for _, headers, _ in answers)
    assert not transport.closed


def test_an_upgrade_request_with_a_body_is_answered_once_then_the_connection_closes() -> None:
    # The parser hands what follows an upgrade's headers over as the upgraded stream: the body
    # cannot be told from a next request, so the connection ends after the one answer.
    authorizer, _, _ = wired()
    protocol, transport = connect(authorizer)
    raw = check("alice", connection="Upgrade", upgrade="websocket", **{"content-length": "5"})
    protocol.data_received(raw + b"hello")
    ((status, headers, _),) = responses(transport.written)
    assert (status, headers["x-user-id"], headers["connection"]) == (200, "alice", "close")
    assert transport.closed


class SlowFirst:
    """An asynchronous limiter whose answer for `slow` arrives after the others'."""

    def __init__(self) -> None:
        self.memory = MemoryLimiter(clock=lambda: NOW)

    async def hit(self, key: str, limit: Limit) -> LimitDecision:
        await asyncio.sleep(0.05 if "slow" in key else 0)
        return self.memory.hit(key, limit)

    async def aclose(self) -> None:
        return None


def test_answers_that_wait_for_the_limiter_keep_the_requests_order() -> None:
    verifier = TokenVerifier(VerifierSettings(), key_source(SECRET), lambda: NOW)
    log = logging.getLogger("test")
    guard = GuardedLimiter(MemoryLimiter(clock=lambda: NOW), fail_open=True, log=log)
    authorizer = Authorizer(
        verifier,
        guard,
        [AuditObserver(AuditLog(io.StringIO()))],
        log,
        lambda: NOW,
        async_limiter=GuardedAsyncLimiter(SlowFirst(), guard),
        policy_keys=(POLICY_KEY,),
    )

    async def scenario() -> list[str]:
        protocol, transport = connect(authorizer)
        protocol.data_received(check("slow") + check(None) + check("fast"))
        for _ in range(200):
            if len(responses(transport.written)) == 3:
                break
            await asyncio.sleep(0.005)
        return [r[1].get("x-user-id", str(r[0])) for r in responses(transport.written)]

    assert asyncio.run(scenario()) == ["slow", "401", "fast"]


def test_a_request_that_trickles_in_is_a_408_after_the_timeout_and_closes() -> None:
    authorizer, _, _ = wired()
    ticker = Ticker()
    connections: set[CheckProtocol] = set()
    slow, slow_transport = CheckProtocol(authorizer, connections, ticker=ticker), FakeTransport()
    idle, idle_transport = CheckProtocol(authorizer, connections, ticker=ticker), FakeTransport()
    slow.connection_made(slow_transport)  # type: ignore[arg-type]
    idle.connection_made(idle_transport)  # type: ignore[arg-type]
    idle.data_received(check("alice"))  # answered; now a kept-alive connection, as Envoy keeps
    slow.data_received(check("bob")[:40])
    for second in range(1, REQUEST_TIMEOUT_S):
        ticker.now = second
        time_out_stalled(connections, ticker.now)
        slow.data_received(b"x")  # one byte a second keeps no connection open for good
    assert not slow_transport.closed
    ticker.now = REQUEST_TIMEOUT_S
    time_out_stalled(connections, ticker.now)
    ((status, _, body),) = responses(slow_transport.written)
    assert status == 408 and json.loads(body)["error"] == "request_timeout"
    assert slow_transport.closed
    assert not idle_transport.closed
