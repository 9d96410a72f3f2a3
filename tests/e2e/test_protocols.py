"""`protocol` and `websocket` through a real Envoy with ext_authz: a gRPC upstream (HTTP/2 only)
is reached, retried on gRPC status codes and bounded by the service's timeout; WebSocket
upgrades pass only where the catalog allows them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar_shared.contract import AUTHZ_CLUSTER
from tests.support import envoy_upstream, stack, tokens, wait, websocket
from tests.support.gateway import Gateway, gateway, guarded, public
from tests.support.grpc_upstream import GrpcUpstream, call
from tests.support.upstreams import Upstream, running


@pytest.fixture
def rpc(tmp_path: Path) -> Iterator[tuple[Gateway, GrpcUpstream]]:
    up = GrpcUpstream().start()
    service = {
        "service_name": "echo",
        "base_path": "/test.Echo",
        "internal_url": up.url,
        "protocol": "grpc",
        "timeout_ms": 500,
        "retry_policy": {
            "max_retries": 2,
            "retry_on": ["unavailable"],
            "retry_non_idempotent": True,
            "backoff_base_ms": 5,
            "backoff_max_ms": 10,
        },
        "healthcheck_endpoint": "/",
        "health_check": {"interval_ms": 100, "timeout_ms": 100, "unhealthy_threshold": 1},
    }
    try:
        with gateway(tmp_path, [service], authz=True) as gw:
            yield gw, up
    finally:
        up.stop()


def token() -> list[tuple[str, str]]:
    return list(tokens.bearer().items())


def test_a_grpc_call_reaches_an_http2_upstream_through_ext_authz(
    rpc: tuple[Gateway, GrpcUpstream],
) -> None:
    gw, up = rpc
    assert call(gw.envoy.listener_port, b"hi", metadata=token()) == b"echo:hi"
    assert up.metadata[-1]["x-user-id"] == "alice"
    with pytest.raises(grpc.RpcError) as denied:
        call(gw.envoy.listener_port, b"hi")
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert up.calls == 1


def test_a_grpc_call_is_retried_on_the_catalogs_status_codes(
    rpc: tuple[Gateway, GrpcUpstream],
) -> None:
    gw, up = rpc
    up.behave(fail_first=2, code=grpc.StatusCode.UNAVAILABLE)
    assert call(gw.envoy.listener_port, b"again", metadata=token()) == b"echo:again"
    assert up.calls == 3
    # A status not in retry_on is not retried.
    up.behave(fail_first=1, code=grpc.StatusCode.INTERNAL)
    with pytest.raises(grpc.RpcError) as failed:
        call(gw.envoy.listener_port, b"once", metadata=token())
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert up.calls == 1


def test_a_hanging_grpc_call_ends_deadline_exceeded_after_about_the_timeout(
    rpc: tuple[Gateway, GrpcUpstream],
) -> None:
    gw, up = rpc
    up.behave(hang=True)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        # The client would wait 20 s; the service's 500 ms caps its grpc-timeout.
        call(gw.envoy.listener_port, b"slow", metadata=token(), timeout=20)
    took = time.monotonic() - start
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= took < 5, took


def test_a_grpc_endpoint_that_is_not_serving_leaves_rotation(
    rpc: tuple[Gateway, GrpcUpstream],
) -> None:
    gw, up = rpc
    up.set_serving(False)
    wait.wait_until(lambda: gw.unhealthy("echo") == {up.port}, what="the gRPC health check")

    def refused() -> bool:
        try:
            call(gw.envoy.listener_port, b"x", metadata=token())
        except grpc.RpcError as err:
            return bool(err.code() == grpc.StatusCode.UNAVAILABLE)
        return False

    wait.wait_until(refused, what="UNAVAILABLE")
    up.behave()  # counts from zero
    assert refused()
    assert up.calls == 0


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[tuple[Gateway, Upstream, Upstream]]:
    with running("ws", "plain") as (ws, plain):
        services = [guarded("ws", ws.url, websocket=True), guarded("plain", plain.url)]
        with gateway(tmp_path, services, authz=True) as gw:
            yield gw, ws, plain


def test_a_websocket_upgrade_passes_where_the_catalog_allows_it(
    sockets: tuple[Gateway, Upstream, Upstream],
) -> None:
    gw, ws, plain = sockets
    port = gw.envoy.listener_port
    assert websocket.exchange(port, "/ws/chat", "hello", tokens.bearer()).reply == "hello"
    assert ws.seen()[0].headers["x-user-id"] == "alice"
    # Still behind ext_authz; and refused on a service without `websocket`.
    assert websocket.exchange(port, "/ws/chat", "hello").status == 401
    assert websocket.exchange(port, "/plain/chat", "hello", tokens.bearer()).status == 403
    assert plain.count() == 0


def test_checks_of_websocket_upgrades_are_answered_once_on_kept_connections(
    sockets: tuple[Gateway, Upstream, Upstream],
) -> None:
    # Envoy forwards the client's Connection: Upgrade and Upgrade to the HTTP check.
    gw, _, _ = sockets
    workers = gw.stats("server.concurrency")["server.concurrency"]
    checks = workers + 4  # more checks than Envoy has connection pools to ext_authz
    port = gw.envoy.listener_port
    for i in range(checks):
        assert websocket.exchange(port, "/ws/chat", f"m{i}", tokens.bearer()).reply == f"m{i}"
    assert websocket.exchange(port, "/ws/chat", "hello").status == 401
    prefix = f"cluster.{AUTHZ_CLUSTER}."
    wait.wait_until(
        lambda: gw.stats(prefix).get(prefix + "upstream_rq_total", 0) > checks,
        what="the checks counted",
    )
    stats = gw.stats(prefix)
    assert stats[prefix + "upstream_cx_protocol_error"] == 0
    assert stats[prefix + "upstream_cx_destroy"] == 0  # every connection kept
    assert stats[prefix + "upstream_cx_total"] <= workers  # and reused


def test_an_http2_service_is_reached_over_http2_only_when_the_catalog_says_so(
    tmp_path: Path,
) -> None:
    proc, port = envoy_upstream.start(tmp_path, http2_only=True)
    url = f"http://127.0.0.1:{port}"
    services = [
        public("h2", url, protocol="http2", healthcheck_endpoint="/healthz"),
        public("h1", url),
    ]
    with stack.stopping(proc), gateway(tmp_path, services) as gw:
        resp = gw.request("GET", "/h2/x")
        assert resp.status == 200
        assert resp.headers["x-protocol"] == "HTTP/2"
        # The same upstream as HTTP/1.1 (the default) cannot be spoken to.
        assert gw.request("GET", "/h1/x").status == 503
