"""The operational HTTP endpoints of a server (`/metrics`, `/ready`, `/status`): a tiny asyncio
HTTP/1.1 server that answers GET and HEAD for a fixed set of paths, one request per connection.
Not for traffic.

`serve` runs on the caller's event loop; `serve_in_thread` gives a threaded server (ext_authz)
its own loop in a daemon thread. A page is a function of nothing, or a `Negotiated` page whose
answer depends on the request's `Accept` header (`/metrics`: the Prometheus text format, or
OpenMetrics for a scraper that asks for `application/openmetrics-text`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Page = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Page]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Negotiated:
    """A page whose answer depends on the request's Accept header; called without one (as a
    plain Handler) it answers as for a client that accepts anything."""

    def __init__(self, answer: Callable[[str], Page]) -> None:
        self._answer = answer

    def __call__(self) -> Page:
        return self._answer("")

    def for_accept(self, accept: str) -> Page:
        return self._answer(accept)


def metrics_page(registry: CollectorRegistry) -> Handler:
    """`registry` in the format the scraper asks for, as prometheus-client chooses it:
    OpenMetrics when Accept names `application/openmetrics-text`, else the text format 0.0.4."""

    def answer(accept: str) -> Page:
        encoder, content_type = choose_encoder(accept)
        return 200, content_type, encoder(registry)

    return Negotiated(answer)


def header(head: bytes, name: str) -> str:
    """The value of request header `name` in the request head (every line joined by ", ",
    as for a header sent twice); "" when absent."""
    wanted = name.lower().encode("latin-1") + b":"
    values = [
        line[len(wanted) :].strip().decode("latin-1")
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(wanted)
    ]
    return ", ".join(values)


def ready_page(
    ready: Callable[[], str | None], note: Callable[[], str | None] | None = None
) -> Handler:
    """200 "ok" when `ready()` returns None (followed by what `note()` returns, if anything:
    a degraded state that does not stop serving), else 503 with the reason it returns."""

    def page() -> Page:
        reason = ready()
        if reason is None:
            extra = note() if note is not None else None
            return 200, "text/plain", b"ok\n" + (extra.encode() + b"\n" if extra else b"")
        return 503, "text/plain", reason.encode() + b"\n"

    return page


async def serve(host: str, port: int, pages: Mapping[str, Handler]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif isinstance(page := pages.get(path), Negotiated):
                status, ctype, body = page.for_accept(header(head, "accept"))
            elif page is not None:
                status, ctype, body = page()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    # Never SO_REUSEPORT: a second server on this port (ours or anyone's) fails to bind, with
    # asyncio's OSError naming the address, instead of taking a share of the connections.
    return await asyncio.start_server(handle, host, port, reuse_port=False)


class ThreadedOpsServer:
    """`serve` on its own event loop in a daemon thread; `close` stops it."""

    def __init__(self, host: str, port: int, pages: Mapping[str, Handler]) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._server = self._loop.run_until_complete(serve(host, port, pages))
        except BaseException:
            self._loop.close()
            raise
        self._thread = threading.Thread(target=self._loop.run_forever, name="ops-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def serve_in_thread(host: str, port: int, pages: Mapping[str, Handler]) -> ThreadedOpsServer:
    """Bind now (raising OSError if the port is taken) and serve from a thread."""
    return ThreadedOpsServer(host, port, pages)
