"""Upstreams that misbehave on purpose: small real HTTP/1.1 servers on loopback ports.

A test starts one, points a catalog at it, and sets what it does next (`behave`): answer, fail
the first N requests then answer, always fail, hang, reset the connection, answer slowly. Its
health endpoint answers 200 or 503 as the test says (`set_healthy`; flip it to make it flap). It
records every request it receives (method, path, arrival time, headers) and how many it was
serving at once, so a test can count attempts, show back-off between them, or see a circuit
breaker hold. A WebSocket upgrade is answered with an echo of every message.

Every answer is JSON: the upstream's name, a serial number (a cached answer repeats one), the
method, path and headers it received.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support import websocket
from tests.support.ports import free_port

HEALTH_PATH = "/healthz"
# The longest a hanging request is held (stop() releases it sooner).
HANG_LIMIT_S = 60.0


@dataclass(frozen=True)
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    at: float  # time.monotonic()
    headers: dict[str, str]


@dataclass
class Behaviour:
    """What the next requests get. `fail_first` requests answer `fail_status` (or reset, or
    hang), then the rest get `mode`."""

    mode: str = "ok"  # ok | fail | hang | reset | slow
    status: int = 200
    fail_first: int = 0
    fail_mode: str = "fail"  # fail | hang | reset
    fail_status: int = 503
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    # Under load a burst of connections from Envoy must not be refused.
    request_queue_size = 128

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._behaviour = Behaviour()
        self._failed = 0
        self._serial = 0
        self._seen: list[Seen] = []
        self._active = 0
        self.max_active = 0
        self.healthy = True
        self.health_delay_s = 0.0
        self._checks: list[tuple[float, int]] = []
        self.released = threading.Event()
        super().__init__(("127.0.0.1", port or free_port()), _Handler)

    # -- control -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        threading.Thread(
            target=self.serve_forever, args=(0.05,), name=f"upstream-{self.name}", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()

    def behave(
        self,
        mode: str = "ok",
        *,
        status: int = 200,
        fail_first: int = 0,
        fail_mode: str = "fail",
        fail_status: int = 503,
        delay_s: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> Upstream:
        """From now on: `fail_first` requests get `fail_mode` (`fail_status`), then `mode`:
        `ok` (answer `status`), `fail` (503, or `status` when it is not 200), `hang` (never
        answer), `reset` (close the connection with a TCP reset, no answer), `slow` (answer
        after `delay_s`). `headers` are added to every answer."""
        with self._lock:
            self._behaviour = Behaviour(
                mode, status, fail_first, fail_mode, fail_status, delay_s, dict(headers or {})
            )
            self._failed = 0
        return self

    def set_healthy(self, healthy: bool, delay_s: float = 0.0) -> None:
        """What the health endpoint answers from now on: 200, or 503; after `delay_s`."""
        self.healthy = healthy
        self.health_delay_s = delay_s

    # -- what it saw -------------------------------------------------------------------------

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Requests received (health checks excluded), optionally of one method or under one
        path prefix, in arrival order."""
        with self._lock:
            out = list(self._seen)
        return [
            s
            for s in out
            if (method is None or s.method == method) and (path is None or s.path.startswith(path))
        ]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.seen(method, path))

    def gaps_ms(self, method: str | None = None, path: str | None = None) -> list[float]:
        """Milliseconds between consecutive arrivals."""
        times = [s.at for s in self.seen(method, path)]
        return [(b - a) * 1000 for a, b in itertools.pairwise(times)]

    def health_checks(self, since: float = 0.0) -> list[int]:
        """Statuses answered on the health endpoint since `since` (time.monotonic())."""
        with self._lock:
            return [status for at, status in self._checks if at >= since]

    def forget(self) -> None:
        with self._lock:
            self._seen.clear()
            self.max_active = 0

    # -- for the handler ---------------------------------------------------------------------

    def _arrive(self, seen: Seen) -> tuple[str, int, float, dict[str, str], int]:
        """Record a request; return (action, status, delay, headers, serial) for it."""
        with self._lock:
            self._seen.append(seen)
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            self._serial += 1
            b = self._behaviour
            if self._failed < b.fail_first:
                self._failed += 1
                return b.fail_mode, b.fail_status, 0.0, b.headers, self._serial
            status = b.status if b.mode != "fail" or b.status != 200 else 503
            return b.mode, status, b.delay_s, b.headers, self._serial

    def _checked(self, status: int) -> None:
        with self._lock:
            self._checks.append((time.monotonic(), status))

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1


class _Handler(BaseHTTPRequestHandler):
    server: Upstream
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path.split("?")[0] == HEALTH_PATH:
            status = 200 if self.server.healthy else 503
            self.server._checked(status)
            if self.server.health_delay_s:
                self.server.released.wait(self.server.health_delay_s)
            self._answer(status, {}, 0)
            return
        if headers.get("upgrade", "").lower() == "websocket":
            self.server._arrive(Seen(self.command, self.path, time.monotonic(), headers))
            try:
                self._websocket(headers)
            finally:
                self.server._leave()
            return
        action, status, delay, extra, serial = self.server._arrive(
            Seen(self.command, self.path, time.monotonic(), headers)
        )
        try:
            if action == "hang":
                self.server.released.wait(HANG_LIMIT_S)
                self.close_connection = True
                return
            if action == "reset":
                self._reset()
                return
            if action == "slow":
                self.server.released.wait(delay)
            self._answer(status, extra, serial)
        finally:
            self.server._leave()

    def _answer(self, status: int, extra: dict[str, str], serial: int) -> None:
        payload = json.dumps(
            {
                "upstream": self.server.name,
                "serial": serial,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with suppress(OSError):
            self.connection.close()

    def _websocket(self, headers: dict[str, str]) -> None:
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", websocket.accept_key(headers["sec-websocket-key"]))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        websocket.echo_frames(self.connection)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def running(*names: str) -> Iterator[list[Upstream]]:
    """Start one upstream per name; stop them all afterwards."""
    started = [Upstream(n).start() for n in names]
    try:
        yield started
    finally:
        for u in started:
            u.stop()
