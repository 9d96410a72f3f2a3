"""Each server alone, as a container runs it, stops on SIGTERM within its grace period: what is
in flight is answered, new connections are refused, and the exit status is 0. `sidecar drain`
(a Kubernetes preStop) does the same to an Envoy."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sidecar.drain import ENVOY_DRAIN_ARGS
from tests.support import http, stack
from tests.support.catalogs import SAMPLE, write_catalog
from tests.support.gateway import public
from tests.support.ports import free_port
from tests.support.upstreams import Upstream
from tests.support.wait import wait_until

GRACE_S = 2.0  # each server's own grace for what is in flight
MARGIN_S = 3.0


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 answer (head and `content-length` body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed inside the body"
        body += chunk
    return head


def test_ext_authz_answers_a_check_in_flight_at_sigterm_and_refuses_new_ones(
    tmp_path: Path,
) -> None:
    authz = stack.start_authz(tmp_path)
    with stack.stopping(authz.proc):
        with socket.create_connection(("127.0.0.1", authz.check_port), timeout=5) as busy:
            # A first check answered: the connection is the server's. Then one whose request is
            # still arriving when the signal comes.
            busy.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: envoy\r\n\r\n")
            assert read_answer(busy).startswith(b"HTTP/1.1 ")
            busy.sendall(b"GET /orders/2 HTTP/1.1\r\nHost: envoy\r\n")
            signalled = time.monotonic()
            authz.proc.popen.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", authz.check_port), timeout=1).close()
                except (ConnectionRefusedError, ConnectionResetError):
                    # Reset: the connect raced the listener's close and was never accepted.
                    return True
                return False

            wait_until(refused, timeout=GRACE_S, what="new connections refused")
            busy.sendall(b"\r\n")
            answer = read_answer(busy)
        assert answer.startswith(b"HTTP/1.1 "), answer
        assert authz.proc.popen.wait(timeout=GRACE_S + MARGIN_S) == 0
        assert time.monotonic() - signalled < GRACE_S + MARGIN_S


def test_the_xds_server_stops_within_its_grace_with_a_proxy_connected_and_envoy_serves_on(
    tmp_path: Path,
) -> None:
    xds = stack.start_xds(SAMPLE, tmp_path)
    envoy = stack.start_envoy(xds, tmp_path, node_id="stays")
    with stack.stopping(envoy.proc):
        wait_until(lambda: xds.synced("stays"), what="Envoy synced")
        signalled = time.monotonic()
        xds.proc.popen.send_signal(signal.SIGTERM)
        assert xds.proc.popen.wait(timeout=GRACE_S + MARGIN_S) == 0
        assert time.monotonic() - signalled < GRACE_S + MARGIN_S
        assert envoy.proc.alive()
        assert envoy.admin("/ready").status == 200  # it keeps its last config


def test_sidecar_drain_lets_envoy_answer_what_is_in_flight_and_refuse_the_rest(
    tmp_path: Path,
) -> None:
    """What a Kubernetes preStop runs against the pod's Envoy."""
    slow = Upstream("slow").start().behave("slow", delay_s=1.5)
    catalog = write_catalog(tmp_path, [public("slow", slow.url, timeout_ms=10_000)])
    xds = stack.start_xds(catalog, tmp_path)
    envoy = stack.start_envoy(xds, tmp_path, node_id="drained", args=list(ENVOY_DRAIN_ARGS))
    answers: list[int | str] = []

    def one() -> None:
        try:
            answers.append(http.get(envoy.url + "/slow/x").status)
        except OSError as err:
            answers.append(type(err).__name__)

    clients = [threading.Thread(target=one, daemon=True) for _ in range(3)]
    try:
        with stack.stopping(envoy.proc, xds.proc):
            stack.wait_for_route(envoy, "/slow/x", 200)
            slow.forget()
            for client in clients:
                client.start()
            wait_until(lambda: slow.count() >= 3, what="three requests at the upstream")
            drain = ["drain", "--envoy-admin", f"127.0.0.1:{envoy.admin_port}"]
            drained = subprocess.run(
                [sys.executable, "-m", "sidecar", *drain, "--drain-timeout", "10"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            for client in clients:
                client.join(timeout=10)
            assert drained.returncode == 0, drained.stderr
            assert "no client connection open" in drained.stdout
            assert answers == [200, 200, 200]
            assert http.try_get(envoy.url + "/slow/x") is None  # refused
            assert envoy.proc.alive()  # stopping it is the kubelet's SIGTERM, after the hook
    finally:
        slow.stop()


def test_sidecar_drain_without_an_envoy_says_so_and_exits_1() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "drain", "--envoy-admin", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "did not answer" in done.stdout
