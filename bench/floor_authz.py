"""The floor of each transport: a server that speaks Envoy's ext_authz protocol and decides
nothing, on the same machinery as ext_authz's transport: `http` (raw asyncio + httptools on
uvloop; every check a 200 with fixed identity headers) or `grpc` (grpcio's sync server with 4
worker threads; every Check an OK with the same headers). Run under the same load as ext_authz,
its CPU per check is what the transport itself costs; ext_authz's minus it is what our
parsing, decision and answer cost.

    python -m bench.floor_authz http|grpc CHECK_PORT METRICS_PORT

`GET /metrics` on METRICS_PORT gives `ext_authz_checks_total` (as ext_authz's page does, so
the benchmark counts its checks the same way) and `GET /ready` answers 200.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
import uvloop

ALLOW = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-user-id: user\r\nx-user-roles: reader\r\n"
    b"x-tenant-id: acme\r\n\r\n"
)


class Counter:
    checks = 0  # (+= from grpc's worker threads may lose a count: a benchmark's tolerance)


class Check(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        Counter.checks += 1
        if self._transport is not None:
            self._transport.write(ALLOW)


async def ops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readline()
    body = f"ext_authz_checks_total {Counter.checks}\n".encode()
    if b" /ready " in request:
        body = b"ok\n"
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


def grpc_server(port: int) -> Any:
    """grpcio's sync server answering every Check with OK and the identity headers."""
    from concurrent import futures  # noqa: PLC0415

    import grpc  # noqa: PLC0415
    from envoy.config.core.v3 import base_pb2  # noqa: PLC0415
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # noqa: PLC0415

    ok = external_auth_pb2.CheckResponse()
    for key, value in (("x-user-id", "user"), ("x-user-roles", "reader"), ("x-tenant-id", "acme")):
        ok.ok_response.headers.add(header=base_pb2.HeaderValue(key=key, value=value))

    class Allow(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
        def Check(self, request: Any, context: Any) -> Any:
            Counter.checks += 1
            return ok

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Allow(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


async def main(transport: str, check_port: int, metrics_port: int) -> None:
    loop = asyncio.get_running_loop()
    if transport == "grpc":
        keep = grpc_server(check_port)  # noqa: F841 (serves from its own threads)
    else:
        await loop.create_server(Check, "127.0.0.1", check_port)
    server = await asyncio.start_server(ops, "127.0.0.1", metrics_port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
