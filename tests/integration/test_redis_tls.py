"""Redis over TLS: a connection gets its own timeout (TCP and the handshake) apart from a
command's, so the first check after start counts instead of timing out in the handshake and
falling to the failure policy; a handshake slower than that timeout is reported at start, and an
untrusted certificate refuses start-up like wrong credentials do (a real TLS redis-server)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from ext_authz.ratelimit import Limit
from ext_authz.ratelimit.base import BackendConfigError
from ext_authz.ratelimit.redis_backend import RedisLimiter, check_backend, redis_key
from tests.support import redis_servers, stack, tokens
from tests.support.mtls import Ca

pytestmark = pytest.mark.integration


@contextmanager
def slow_handshake(target_port: int, delay_s: float) -> Iterator[int]:
    """A TCP relay to `target_port` that holds the server's first bytes (its half of the TLS
    handshake) for `delay_s`; returns its port. One connection at a time, bounded."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    opened: list[socket.socket] = []
    pipes: list[threading.Thread] = []

    def pipe(src: socket.socket, dst: socket.socket, delay_first: bool) -> None:
        first = delay_first
        try:
            while data := src.recv(65536):
                if first:
                    stop.wait(delay_s)
                    first = False
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            opened.extend((client, upstream))
            for src, dst, delay in ((client, upstream, False), (upstream, client, True)):
                pipes.append(threading.Thread(target=pipe, args=(src, dst, delay), daemon=True))
                pipes[-1].start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for s in opened:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in pipes:
            t.join(timeout=5)
        for s in opened:
            s.close()
        listener.close()


def test_the_first_check_after_start_counts_when_the_handshake_fits_the_connect_timeout(
    tmp_path: Path,
) -> None:
    prefix = f"tls-{uuid.uuid4().hex}:"
    limit = Limit(limit=5, window_s=60)
    with (
        redis_servers.tls_redis(tmp_path) as redis_tls,
        slow_handshake(redis_tls.server.port, 0.1) as port,
    ):
        url = redis_tls.url(port=port)
        assert check_backend(url, prefix, connect_timeout_ms=2000) is None
        # A command keeps its timeout (shorter than this handshake); opening the connection has
        # its own.
        limiter = RedisLimiter.from_url(url, timeout_ms=50, connect_timeout_ms=2000, prefix=prefix)
        try:
            decision = limiter.hit("alice", limit)
        finally:
            limiter.close()
        assert decision.allowed
        assert decision.remaining == 4
        with redis_servers.RedisServer(redis_tls.server.proc, redis_tls.server.port).client(
            ssl=True, ssl_ca_certs=str(redis_tls.ca_file)
        ) as direct:
            assert direct.exists(redis_key(prefix, "alice", 60))
            direct.delete(redis_key(prefix, "alice", 60))


def test_a_handshake_slower_than_the_connect_timeout_is_reported_at_start(
    tmp_path: Path,
) -> None:
    with (
        redis_servers.tls_redis(tmp_path) as redis_tls,
        slow_handshake(redis_tls.server.port, 0.3) as port,
    ):
        reason = check_backend(redis_tls.url(port=port), connect_timeout_ms=50)
    assert reason is not None
    assert "more than SIDECAR_REDIS_CONNECT_TIMEOUT_MS (50): raise it" in reason


def test_an_untrusted_certificate_refuses_start_up(tmp_path: Path) -> None:
    stranger = Ca(tmp_path / "other-ca", name="some other CA")
    with redis_servers.tls_redis(tmp_path) as redis_tls:
        url = redis_tls.url(ca_file=stranger.ca_file)
        with pytest.raises(BackendConfigError, match="TLS certificate is not trusted"):
            check_backend(url)
        result = stack.run_authz_to_exit(
            {"SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode()},
            *("--rate-limit-backend", "redis", "--redis-url", url),
        )
    assert result.returncode == 1
    assert "TLS certificate is not trusted" in result.stderr
