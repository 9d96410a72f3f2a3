"""The HTTP transport: Envoy's HTTP ext_authz protocol ↔ the decision core, on a raw asyncio
server with httptools' parser (and uvloop's loop when it is installed), in a thread of its own.

The protocol (what the xDS server configures, `xds_server/resources/authz.py`): Envoy sends
the client's method, `CHECK_PATH_PREFIX` + the client's path, and the client's headers, plus
the route's policy in `POLICY_HEADER` (Envoy sets it from the route's config, overwriting any
copy a client sent; the core believes it only with its MAC). The client's address is the last
`x-forwarded-for` entry when the connection comes from a trusted caller (`trusted_caller`:
loopback, or a verified client certificate), else the connection's own peer. ext_authz
answers 200 to allow, with the identity headers (Envoy copies `UPSTREAM_HEADERS` onto the
upstream request, overwriting), the headers to remove in `REMOVE_HEADERS_HEADER`, and the
rate-limit headers for the client; any other status is the denial the client gets, with its
headers and JSON body.

The server: HTTP/1.1 keep-alive; pipelined requests are answered in order; a request's
`Connection: Upgrade` and `Upgrade` (Envoy forwards a websocket request's) are headers of the
check like any other: it is answered once and the connection stays open (it closes after the
answer when bytes follow the upgrade request's head: a declared body, a CONNECT); a request is at
most `max_request_bytes` (request line, headers and any body) and `max_headers` headers (431
above, then the connection is closed); anything that does not parse is a 400 with a JSON body,
then the connection is closed; a request still incomplete `REQUEST_TIMEOUT_S` after it began
is a 408, then the connection is closed (a slow client cannot hold connections open by
trickling bytes; an idle kept-alive connection, which is how Envoy waits, stays). Checks run
on the event loop: the core never blocks (keys are fetched in the background, the Redis
limiter is awaited, audit lines are written by a thread).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import httptools

from ext_authz.core import Authorizer, QuickAllow
from ext_authz.decision import CheckInput, Headers, Outcome
from ext_authz.fastpath import Prepared
from ext_authz.grpc_status import denial_headers
from ext_authz.limits import trusted_caller
from sidecar_shared import tls
from sidecar_shared.contract import (
    CHECK_PATH_PREFIX,
    METHOD_OVERRIDE_HEADERS,
    POLICY_HEADER,
    POLICY_KEY,
    REMOVE_HEADERS_HEADER,
)

try:  # uvloop is optional: the standard loop works, a little slower
    import uvloop

    _new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    LOOP = "uvloop"
except ImportError:  # pragma: no cover - depends on the platform
    _new_loop = asyncio.new_event_loop
    LOOP = "asyncio"

MAX_REQUEST_BYTES = 128 * 1024  # Envoy's own header limit is 60 KiB; no body is sent
MAX_HEADERS = 256  # Envoy forwards at most its max_request_headers (100) and a few of its own
REQUEST_TIMEOUT_S = 10  # Envoy sends a check in one write; only a slow client takes longer

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
}
_PREFIX = CHECK_PATH_PREFIX.encode()
_POLICY = POLICY_HEADER.encode()
_OVERRIDE_0, _OVERRIDE_1, _OVERRIDE_2 = (name.encode() for name in METHOD_OVERRIDE_HEADERS)
_ALLOW_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
_REMOVE = REMOVE_HEADERS_HEADER.encode() + b": "
_CLOSE = b"connection: close\r\n"


def _protocol_error(status: int, error: str, message: str) -> bytes:
    """A complete response for a request that never reached the core; the connection closes."""
    body = json.dumps({"error": error, "message": message}, separators=(",", ":")).encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            _CLOSE,
            b"\r\n",
            body,
        )
    )


BAD_REQUEST = _protocol_error(400, "bad_request", "not an HTTP/1.1 check request")
TOO_LARGE = _protocol_error(431, "headers_too_large", "the check request is too large")
TIMED_OUT = _protocol_error(408, "request_timeout", "the check request took too long to arrive")


class Ticker:
    """Whole seconds since the server started, advanced by the server's loop: what a
    connection reads to note when its request began costs one attribute lookup."""

    def __init__(self) -> None:
        self.now = 0


def _header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode()


def encode_outcome(outcome: Outcome, keep_alive: bool = True, extra: Headers = ()) -> bytes:
    """The HTTP answer Envoy turns into `outcome`; `extra`: headers for a denial beside the
    outcome's (`grpc_status.denial_headers`)."""
    close = b"" if keep_alive else _CLOSE
    if outcome.status == 200:
        parts = [_ALLOW_HEAD, close, _header_lines(outcome.set_headers)]
        if outcome.remove_headers:
            parts += [_REMOVE, ",".join(outcome.remove_headers).encode(), b"\r\n"]
        parts += [_header_lines(outcome.response_headers), b"\r\n"]
        return b"".join(parts)
    reason = _REASONS.get(outcome.status, b"Denied")
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n"
            % (outcome.status, reason, len(outcome.body)),
            close,
            _header_lines(outcome.response_headers),
            _header_lines(extra),
            b"\r\n",
            outcome.body,
        )
    )


# Stand-ins for what changes per cached allow, found in an encoded answer and cut out.
_RID_MARK = "\x00request-id\x00"
_REMAINING_MARK = 987_654_321
_RESET_MARK = 876_543_219


def _allow_template(prepared: Prepared) -> bytes | None:
    """`encode_outcome`'s answer (kept alive) for `prepared` as a %-template of the request id
    (bytes), the limit's remaining and its reset (ints, when limited); None when the stand-ins
    cannot be found exactly once each (a service named with their digits, say)."""
    limited = prepared.limit is not None
    burst = prepared.limit.burst if prepared.limit is not None else 0
    encoded = encode_outcome(prepared.outcome(_RID_MARK, _REMAINING_MARK + burst, _RESET_MARK))
    marks = [_RID_MARK.encode()]
    if limited:
        marks += [b"%d" % _REMAINING_MARK, b"%d" % _RESET_MARK]
    parts = [encoded]
    for mark in marks:
        rest = parts.pop().split(mark)
        if len(rest) != 2 or any(mark in p for p in parts):
            return None
        parts += rest
    placeholders = [b"%s"] + [b"%d"] * (len(marks) - 1)
    return parts[0].replace(b"%", b"%%") + b"".join(
        mark + part.replace(b"%", b"%%") for mark, part in zip(placeholders, parts[1:], strict=True)
    )


def encode_quick(answer: QuickAllow) -> bytes:
    """`encode_outcome` of a cached allow (kept alive), from the prepared answer's template."""
    prepared, request_id, remaining, reset_s = answer
    template = prepared.wire
    if template is None:
        template = prepared.wire = _allow_template(prepared) or b""
    if not template:
        return encode_outcome(prepared.outcome(request_id, remaining, reset_s))
    if prepared.limit is None:
        return template % request_id.encode()
    shown = remaining - prepared.limit.burst
    return template % (request_id.encode(), shown if shown > 0 else 0, reset_s)


def untrusted_peer(transport: asyncio.BaseTransport) -> str | None:
    """The connection's peer address when it is not a trusted caller; None when it is. A peer
    is authenticated when TLS verified its certificate (`getpeercert()` is empty otherwise)."""
    peer = transport.get_extra_info("peername")
    host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    tls = transport.get_extra_info("ssl_object")
    authenticated = tls is not None and bool(tls.getpeercert())
    return None if trusted_caller(host, authenticated) else host


def client_peer(headers: dict[str, str]) -> str:
    """The client's address: the last `x-forwarded-for` entry, which Envoy appended (its
    listener uses the remote address), as `source.address` is in a gRPC check."""
    return _last_entry(headers.get("x-forwarded-for"))


def _last_entry(forwarded: str | None) -> str:
    if not forwarded:
        return ""
    return forwarded.rpartition(",")[2].strip()


def header_lines_of(headers: dict[bytes, bytes]) -> int:
    """`core.header_lines` of these headers (raw values: a comma is the same byte)."""
    return len(headers) + b"".join(headers.values()).count(b",")


class CheckProtocol(asyncio.Protocol):
    """One connection from Envoy: parse, check, answer, in order."""

    def __init__(
        self,
        authorizer: Authorizer,
        connections: set[CheckProtocol],
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_headers: int = MAX_HEADERS,
        ticker: Ticker | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._connections = connections
        self._ticker = ticker or Ticker()
        self._begun = 0  # the ticker's second when the request in progress began
        self._max_bytes = max_request_bytes
        self._max_headers = max_headers
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._untrusted_peer: str | None = ""  # until connected: trusted by nobody
        self._url = b""
        # Raw names (lower-case) and values, as they came: only what the core reads is decoded
        # on the fast path; `_decoded` decodes them all (latin-1) for the general one.
        self._headers: dict[bytes, bytes] = {}
        self._size = 0
        self._out: list[bytes] = []
        # Answers not yet written, in request order, once one of them had to wait (Redis).
        self._queue: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._closing = False

    @property
    def idle(self) -> bool:
        return not self._queue and not self._size

    def stalled(self, now: int, timeout_s: int) -> bool:
        """Whether a request began at least `timeout_s` seconds ago and is still incomplete."""
        return self._size > 0 and now - self._begun >= timeout_s

    def time_out(self) -> None:
        """Answer the incomplete request with 408 (after what is owed), then close."""
        self._size = 0
        self._fail(TIMED_OUT)
        self._flush()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._untrusted_peer = untrusted_peer(transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        for pending in self._queue:
            pending.cancel()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        rest: bytes | memoryview = data
        while rest and not self._closing:
            try:
                self._parser.feed_data(rest)
                rest = b""
            except httptools.HttpParserUpgrade as upgrade:
                # `Upgrade` is data of the check: `on_message_complete` has answered the request
                # already, and the parser, resumed, reads what follows as the next request.
                rest = memoryview(rest)[upgrade.args[0] :]
            except httptools.HttpParserError as err:
                # httptools wraps what a callback raised
                self._fail(TOO_LARGE if isinstance(err.__context__, _TooLarge) else BAD_REQUEST)
        self._flush()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._size = 1
        self._begun = self._ticker.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._size += len(url)
        if self._size > self._max_bytes:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._size + len(name) + len(value)
        self._size = size
        if size > self._max_bytes:
            raise _TooLarge
        if not name.islower():  # Envoy sends lower-case names
            name = name.lower()
        headers = self._headers
        if name in headers:  # joined, as Envoy joins them for gRPC
            headers[name] += b"," + value
        else:
            headers[name] = value

    def on_headers_complete(self) -> None:
        if len(self._headers) > self._max_headers:  # the byte bound held while they came
            raise _TooLarge

    def on_body(self, body: bytes) -> None:
        self._size += len(body)  # Envoy sends none; a body only counts against the bound
        if self._size > self._max_bytes:
            raise _TooLarge

    def on_message_complete(self) -> None:
        raw = self._headers
        policy = raw.pop(_POLICY, b"").decode("latin-1")
        url = self._url
        if url.startswith(_PREFIX):
            url = url[len(_PREFIX) :] or b"/"
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        path = url.decode("latin-1")
        get = raw.get
        keep_alive = parser.should_keep_alive()
        if keep_alive and parser.should_upgrade() and _streams_after(method, self._decoded()):
            # The parser hands what follows an upgrade request's head over as the upgraded
            # stream: a body or tunnel that cannot be told from a next request. The answer is
            # the last on this connection.
            keep_alive = False
        self._size = 0
        authorization = get(b"authorization")
        if keep_alive and authorization is not None:
            request_id = get(b"x-request-id")
            tenant = get(b"x-tenant-id")
            traceparent = get(b"traceparent")
            forwarded = get(b"x-forwarded-for")
            quick = self._authorizer.allow_prepared(
                method,
                path,
                policy,
                authorization.decode("latin-1"),
                None if tenant is None else tenant.decode("latin-1"),
                None if request_id is None else request_id.decode("latin-1"),
                header_lines_of(raw),
                _OVERRIDE_0 in raw or _OVERRIDE_1 in raw or _OVERRIDE_2 in raw,
                None if traceparent is None else traceparent.decode("latin-1"),
                _last_entry(None if forwarded is None else forwarded.decode("latin-1")),
                self._untrusted_peer,
                self._decoded,
            )
            if quick is not None:
                self._answer(encode_quick(quick))
                return
        headers = self._decoded()
        request = CheckInput(
            method,
            path,
            headers,
            {POLICY_KEY: policy},
            client_peer(headers),
            None,
            self._untrusted_peer,
        )
        result = self._authorizer.check_or_defer(request, quick=False)
        if isinstance(result, Outcome):
            extra = () if result.allowed else denial_headers(result.status, headers)
            self._answer(encode_outcome(result, keep_alive, extra))
        else:
            self._defer(result, keep_alive, headers)
        if not keep_alive:
            self._closing = True

    def _decoded(self) -> dict[str, str]:
        """The request's headers (the route policy's aside), decoded."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self._headers.items()}

    # internals

    def _defer(
        self, pending: Awaitable[Outcome], keep_alive: bool, headers: dict[str, str]
    ) -> None:
        async def answer() -> bytes:
            outcome = await pending
            extra = () if outcome.allowed else denial_headers(outcome.status, headers)
            return encode_outcome(outcome, keep_alive, extra)

        task = asyncio.ensure_future(answer())
        self._queue.append(task)
        task.add_done_callback(self._drain)

    def _drain(self, _: object = None) -> None:
        """Write every answer at the head of the queue that is ready, in order."""
        while self._queue and self._queue[0].done():
            head = self._queue.popleft()
            if head.cancelled():
                continue
            self._out.append(head.result())
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._out.clear()
            return
        if self._out:
            transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()
        if self._closing and not self._queue:
            transport.close()

    def _answer(self, answer: bytes) -> None:
        """Send `answer` after every answer still owed to earlier requests (pipelining)."""
        if self._queue:
            done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            done.set_result(answer)
            self._queue.append(done)
        else:
            self._out.append(answer)

    def _fail(self, answer: bytes) -> None:
        """Answer a request that cannot be checked after those before it, then close."""
        self._closing = True
        self._answer(answer)

    def close_when_idle(self) -> None:
        """Close once the answers already owed are written (at once when none are)."""
        self._closing = True
        self._flush()


def _streams_after(method: str, headers: dict[str, str]) -> bool:
    """Whether bytes of this request follow its head (a declared body, or CONNECT's tunnel)."""
    declared = headers.get("content-length", "0").strip() not in ("", "0")
    return method == "CONNECT" or declared or "transfer-encoding" in headers


def time_out_stalled(
    connections: set[CheckProtocol], now: int, timeout_s: int = REQUEST_TIMEOUT_S
) -> None:
    """408 and close every connection whose request has been arriving for `timeout_s`."""
    for conn in [c for c in connections if c.stalled(now, timeout_s)]:
        conn.time_out()


class _TooLarge(Exception):
    """The request passed `max_request_bytes` or `max_headers`."""


class HttpTransport:
    """Serves checks on `host:port` from a thread running its own event loop."""

    name = "http"

    def __init__(
        self,
        authorizer: Authorizer,
        host: str,
        port: int,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
        server_tls: tls.ServerTls | None = None,
    ) -> None:
        """`on_stop`: coroutines run on the transport's loop as it stops (closing clients
        that belong to that loop, like the asynchronous Redis limiter). `server_tls`: the port
        speaks TLS (with a client CA, mTLS: the handshake of a peer without a certificate that
        CA signed fails, so no check is read); the files are re-read, when they changed, as a
        connection is accepted."""
        self.address = f"{host}:{port}"
        self._authorizer = authorizer
        self._host = host
        self._port = port
        self._max_request_bytes = max_request_bytes
        self._on_stop = tuple(on_stop)
        self._tls = tls.ReloadingContext(server_tls) if server_tls else None
        self._connections: set[CheckProtocol] = set()
        self._ticker = Ticker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the OS's choice for port 0)."""
        return self._port

    def start(self) -> None:
        # Never SO_REUSEPORT: a second server on this port fails to bind instead of sharing it.
        sock = socket.create_server((self._host, self._port), backlog=1024, reuse_port=False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._port = sock.getsockname()[1]
        loop = _new_loop()
        ready: asyncio.Future[asyncio.Server] = loop.create_future()

        reloading = self._tls

        def protocol() -> CheckProtocol:
            if reloading is not None:  # before this connection's handshake
                reloading.refresh()
            return CheckProtocol(
                self._authorizer, self._connections, self._max_request_bytes, ticker=self._ticker
            )

        def tick() -> None:
            self._ticker.now += 1
            time_out_stalled(self._connections, self._ticker.now)
            self._authorizer.tick()
            loop.call_later(1, tick)

        async def serve() -> None:
            try:
                context = reloading.context if reloading is not None else None
                ready.set_result(await loop.create_server(protocol, sock=sock, ssl=context))
            except Exception as err:  # pragma: no cover - the socket is already bound
                ready.set_exception(err)

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_later(1, tick)
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="http-check", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(timeout=10)

    def set_serving(self, serving: bool) -> None:
        """Probes use the gRPC port's health service; nothing to tell here."""

    def stop(self, grace_s: float) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(grace_s), loop).result(grace_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=grace_s + 5)
        self._loop = self._thread = None

    async def _shutdown(self, grace_s: float) -> None:
        """Stop accepting, close idle connections, let busy ones answer for up to `grace_s`."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + grace_s
        while self._connections and asyncio.get_running_loop().time() < deadline:
            for conn in list(self._connections):
                if conn.idle:
                    conn.close_when_idle()
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.close_when_idle()
        for stop in self._on_stop:
            with contextlib.suppress(Exception):
                await stop()


async def _wait(future: asyncio.Future[Any]) -> Any:
    return await future
