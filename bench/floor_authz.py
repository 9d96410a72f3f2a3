"""The floor for the HTTP transport: a server that speaks Envoy's HTTP ext_authz protocol and
decides nothing (raw asyncio + httptools on uvloop, as ext_authz's HTTP transport): every
check is a 200 with fixed identity headers. Run under the same load as ext_authz, its CPU per
check is what the event loop and the sockets cost; ext_authz's minus it is what our parsing,
decision and answer cost.

    python -m bench.floor_authz CHECK_PORT METRICS_PORT

`GET /metrics` on METRICS_PORT gives `ext_authz_checks_total` (as ext_authz's page does, so
the benchmark counts its checks the same way) and `GET /ready` answers 200.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

ALLOW = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-user-id: user\r\nx-user-roles: reader\r\n"
    b"x-tenant-id: acme\r\n\r\n"
)


class Counter:
    checks = 0


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


async def main(check_port: int, metrics_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(Check, "127.0.0.1", check_port)
    server = await asyncio.start_server(ops, "127.0.0.1", metrics_port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
