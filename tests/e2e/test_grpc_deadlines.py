"""`timeout_ms` bounds every gRPC call through a real Envoy, whatever deadline the client sends
or leaves out: a call ends `DEADLINE_EXCEEDED` at the client's deadline or the service's timeout,
whichever comes first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.gateway import Gateway, gateway, public
from tests.support.grpc_upstream import GrpcUpstream, call

TIMEOUT_MS = 2000
# The method's own time: longer than the service's timeout.
SLOW_S = 3.0


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[tuple[Gateway, GrpcUpstream]]:
    up = GrpcUpstream().start()
    service = public("echo", up.url, base_path="/test.Echo", protocol="grpc", timeout_ms=TIMEOUT_MS)
    try:
        with gateway(tmp_path, [service]) as gw:
            up.behave(delay_s=SLOW_S)
            yield gw, up
    finally:
        up.stop()


def timed_call(gw: Gateway, timeout: float | None) -> tuple[grpc.StatusCode, float]:
    start = time.monotonic()
    try:
        call(gw.envoy.listener_port, b"x", timeout=timeout)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
    return code, time.monotonic() - start


def test_a_call_without_a_deadline_ends_deadline_exceeded_at_the_services_timeout(
    slow: tuple[Gateway, GrpcUpstream],
) -> None:
    gw, _ = slow
    # grpcio's default: no grpc-timeout header at all.
    code, took = timed_call(gw, None)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # About the 2 s timeout: not before it, and before the method's own 3 s.
    assert 1.9 <= took < SLOW_S - 0.2, took


def test_a_longer_deadline_is_cut_to_the_services_timeout(
    slow: tuple[Gateway, GrpcUpstream],
) -> None:
    gw, _ = slow
    code, took = timed_call(gw, 5.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.9 <= took < SLOW_S - 0.2, took


def test_a_shorter_deadline_is_kept(slow: tuple[Gateway, GrpcUpstream]) -> None:
    gw, _ = slow
    code, took = timed_call(gw, 1.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.9 <= took < 1.9, took


def test_a_call_within_the_timeout_is_answered(slow: tuple[Gateway, GrpcUpstream]) -> None:
    gw, up = slow
    up.behave(delay_s=0.2)
    code, took = timed_call(gw, None)
    assert code == grpc.StatusCode.OK
    assert took >= 0.2
