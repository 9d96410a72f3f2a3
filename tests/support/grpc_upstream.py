"""A real gRPC upstream (grpcio, HTTP/2 only) that misbehaves on purpose: one unary method,
`/test.Echo/Call`, that echoes its request (at once or after a delay), or fails the first N calls
with a status, or hangs;
and `grpc.health.v1` whose answer a test sets. It counts the calls it receives."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.ports import free_port

METHOD = "/test.Echo/Call"
HANG_LIMIT_S = 60.0


class GrpcUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._fail_first = 0
        self._fail_code = grpc.StatusCode.UNAVAILABLE
        self._hang = False
        self._delay_s = 0.0
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self.released = threading.Event()
        self.health = health.HealthServicer()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handler = grpc.unary_unary_rpc_method_handler(self._call)
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Echo", {"Call": handler})]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GrpcUpstream:
        self._server.start()
        self.set_serving(True)
        return self

    def stop(self) -> None:
        self.released.set()
        self._server.stop(grace=None)

    def behave(
        self,
        *,
        fail_first: int = 0,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        hang: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        """From now on: the first `fail_first` calls end with `code`; then echo after `delay_s`
        (or hang)."""
        with self._lock:
            self._fail_first, self._fail_code, self._hang = fail_first, code, hang
            self._delay_s = delay_s
            self.calls = 0

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)

    def _call(self, request: bytes, context: Any) -> bytes:
        with self._lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            failing = self.calls <= self._fail_first
            code, hang, delay_s = self._fail_code, self._hang, self._delay_s
        if failing:
            context.abort(code, "failing on purpose")
        if hang:
            self.released.wait(HANG_LIMIT_S)
            context.abort(grpc.StatusCode.ABORTED, "released")
        if delay_s:
            self.released.wait(delay_s)
        return b"echo:" + request


def call(
    port: int,
    payload: bytes,
    *,
    timeout: float | None = 10.0,
    metadata: list[tuple[str, str]] | None = None,
) -> bytes:
    """Call `/test.Echo/Call` through 127.0.0.1:`port` (HTTP/2 cleartext), with a deadline of
    `timeout` seconds (None: no deadline, grpcio's default); raises grpc.RpcError."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(METHOD)
        reply: bytes = method(payload, timeout=timeout, metadata=metadata)
        return reply
