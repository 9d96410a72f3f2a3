"""CPU per cached allow, in process, no sockets: the decision core's general path against its
fast path (`ext_authz.fastpath`), in the same run, on the same request.

    python -m bench.check_fastpath [--calls 20000] [--rounds 7]

The authorizer is wired as `ext_authz.app.build_authorizer` wires it for the benchmark's
`http-1-token` stack: metrics, audit of 1 % of allows (to a discarded stream), the proxy hint,
tracing configured (never sampled: Envoy's traceparent has flags 00), the in-memory limiter,
and the route the issue's targets are measured on (JWT + RBAC + tenant scope + a rate limit
too high to reach, so every check counts). One token, so every check after the first is a
cached allow. Measured with `time.thread_time_ns` (CPU of this thread), min and median of
`--rounds` rounds of `--calls` calls, in µs per call:

- core: `check_or_defer` (general) or `allow_quickly` (fast), then the HTTP answer's bytes;
- http: the whole HTTP transport on the exact request bytes Envoy sends
  (`CheckProtocol.data_received`: httptools' parse, the core, the answer; the write is to a
  fake transport, so the syscall is excluded: that is the floor, ~14 µs, in the profile);
- grpc: the gRPC transport's request parse and response build around `Authorizer.check`
  (`to_input` + `check` + `to_response` on a parsed `CheckRequest`; grpc's own C core and
  the protobuf (de)serialisation on the wire are excluded).
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time
from collections.abc import Callable

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer
from ext_authz.decision import CheckInput, Outcome
from ext_authz.keys import KeySettings, KeySource
from ext_authz.metrics import AuthzMetrics
from ext_authz.observers import AuditObserver, MetricsObserver, ProxyHint, TracingObserver
from ext_authz.ratelimit import GuardedLimiter, MemoryLimiter
from ext_authz.tokens import TokenVerifier, VerifierSettings, mint
from ext_authz.transports import grpc as grpc_transport
from ext_authz.transports.http import CheckProtocol, encode_outcome, encode_quick
from sidecar_shared.contract import (
    CHECK_PATH_PREFIX,
    POLICY_HEADER,
    POLICY_KEY,
    Limit,
    RoutePolicy,
)
from tests.support.fakes import FakeTransport
from tests.support.policies import POLICY_KEY as POLICY_MAC_KEY
from tests.support.policies import encode

SECRET = b"bench-fastpath-secret-long-enough-0123456789"
POLICY = encode(
    RoutePolicy(
        service="secure",
        allowed_roles={"read": frozenset({"reader"})},
        tenant_scope="tenant",
        rate_limit=Limit(1_000_000, 1),
    )
)


def authorizer(fast: bool) -> Authorizer:
    log = logging.getLogger("bench")
    log.disabled = True
    keys = KeySource(KeySettings(secret=SECRET), log)
    keys.load()
    audit = AuditLog(io.StringIO(), 0.01)  # never started: lines only buffer (bounded)
    return Authorizer(
        TokenVerifier(VerifierSettings(), keys, log=log),
        GuardedLimiter(MemoryLimiter(), fail_open=True, log=log),
        [
            MetricsObserver(AuthzMetrics(CollectorRegistry())),
            AuditObserver(audit),
            ProxyHint(0, log),
            TracingObserver(TracerProvider().get_tracer("bench")),
        ],
        log,
        policy_keys=(POLICY_MAC_KEY,),
        fast_path=fast,
    )


def envoy_headers(token: str) -> dict[str, str]:
    """The headers of a check as the bench's gateway Envoy sends them (HTTP transport)."""
    return {
        "host": "127.0.0.1:10000",
        "user-agent": "wrk",
        "authorization": f"Bearer {token}",
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-envoy-internal": "true",
        "x-request-id": "7c1ac5a1-7a8e-4ad6-9d0c-0a3f4e5b2c11",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "x-envoy-expected-rq-timeout-ms": "200",
        "content-length": "0",
    }


def request_bytes(headers: dict[str, str]) -> bytes:
    lines = [f"GET {CHECK_PATH_PREFIX}/secure/x HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"{POLICY_HEADER}: {POLICY}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def per_call_us(call: Callable[[], object], calls: int, rounds: int) -> tuple[float, float]:
    """(min, median) CPU µs per call over `rounds` rounds of `calls` calls."""
    for _ in range(2000):  # warm: the first check prepares; the proxy hint looks at 1000
        call()
    out = []
    for _ in range(rounds):
        start = time.thread_time_ns()
        for _ in range(calls):
            call()
        out.append((time.thread_time_ns() - start) / calls / 1000)
    return min(out), statistics.median(out)


def core_call(auth: Authorizer, headers: dict[str, str], fast: bool) -> Callable[[], object]:
    def general() -> bytes:
        req = CheckInput("GET", "/secure/x", dict(headers), {POLICY_KEY: POLICY}, "127.0.0.1")
        out = auth.check_or_defer(req, quick=False)
        assert isinstance(out, Outcome) and out.status == 200, out
        return encode_outcome(out)

    def quick() -> bytes:
        answer = auth.allow_quickly("GET", "/secure/x", dict(headers), POLICY, "127.0.0.1", None)
        if answer is None:
            return general()
        return encode_quick(answer)

    return quick if fast else general


def http_call(auth: Authorizer, data: bytes) -> Callable[[], object]:
    transport = FakeTransport()
    conn = CheckProtocol(auth, set())
    conn.connection_made(transport)  # type: ignore[arg-type]

    def call() -> None:
        transport.written = b""
        conn.data_received(data)
        assert transport.written.startswith(b"HTTP/1.1 200"), transport.written[:200]

    return call


def floor_call(data: bytes) -> Callable[[], object]:
    """`bench.floor_authz`'s HTTP server (decides nothing) on the same bytes: what a loaded
    machine makes of a known cost (0.87 µs on a quiet one, in the 2026-12-04 profile)."""
    from bench.floor_authz import Check  # noqa: PLC0415

    transport = FakeTransport()
    conn = Check()
    conn.connection_made(transport)  # type: ignore[arg-type]

    def call() -> None:
        transport.written = b""
        conn.data_received(data)

    return call


def grpc_call(auth: Authorizer, headers: dict[str, str]) -> Callable[[], object]:
    from envoy.service.auth.v3 import external_auth_pb2  # noqa: PLC0415

    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = "GET"
    http.path = "/secure/x"
    for k, v in headers.items():
        http.headers[k] = v
    request.attributes.context_extensions[POLICY_KEY] = POLICY
    request.attributes.source.address.socket_address.address = "127.0.0.1"

    def call() -> None:
        response = grpc_transport.to_response(
            auth.check(grpc_transport.to_input(request, None, None))
        )
        assert response.status.code == 0

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    token = mint(SECRET, sub="user-0", roles=["reader"], tenant="acme", ttl_s=3600)
    headers = envoy_headers(token)
    data = request_bytes(headers)
    makers: list[tuple[str, Callable[[Authorizer, bool], Callable[[], object]]]] = [
        ("core", lambda a, f: core_call(a, headers, f)),
        ("http", lambda a, f: http_call(a, data)),
        ("grpc", lambda a, f: grpc_call(a, headers)),
    ]
    rows = []
    for name, make in makers:
        general = per_call_us(make(authorizer(False), False), args.calls, args.rounds)
        fast = per_call_us(make(authorizer(True), True), args.calls, args.rounds)
        rows.append((name, general, fast))
    print(f"CPU µs per cached allow ({args.rounds} rounds x {args.calls} calls; min / median)")
    print(f"{'part':<6} {'general':>17} {'fast path':>17} {'fast/general':>13}")
    for name, (g_min, g_med), (f_min, f_med) in rows:
        print(
            f"{name:<6} {g_min:>7.2f} / {g_med:>7.2f} {f_min:>7.2f} / {f_med:>7.2f}"
            f" {f_med / g_med:>13.2f}"
        )
    floor = per_call_us(floor_call(data), args.calls, args.rounds)
    print(f"{'floor':<6} {floor[0]:>7.2f} / {floor[1]:>7.2f}  (bench.floor_authz: 0.87 when quiet)")
    print("target: ≤ 20 µs per cached allow in all, of which the loopback floor is ~14 µs")


if __name__ == "__main__":
    main()
