"""The ext-authz process over real gRPC: start-up rules, health, hostile input, key rotation."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import jwt

from sidecar_shared.contract import POLICY_HEADER
from tests.support import ports, stack, tokens, wait
from tests.support.authz_client import OPEN_POLICY, check
from tests.support.keys import ec_key, rsa_key, write_jwks


def test_without_a_key_it_refuses_to_start_and_says_why() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_JWT", "SIDECAR_JWKS"))}
    result = subprocess.run(
        [sys.executable, "-m", "ext_authz", "--authz-port", str(ports.free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "SIDECAR_JWT_SECRET" in result.stderr and "SIDECAR_JWKS" in result.stderr


def test_it_answers_health_probes(authz: stack.Authz) -> None:
    for service in ("", "envoy.service.auth.v3.Authorization"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "probe",
                f"127.0.0.1:{authz.port}",
                "--service",
                service,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "SERVING" in result.stdout


def test_a_64_kib_token_is_a_quick_401(authz: stack.Authz) -> None:
    response = check(authz.port, "Bearer " + "a" * 65536, timeout=2.0)
    assert response.denied_response.status.code == 401
    assert response.status.code == 16  # UNAUTHENTICATED


def test_a_valid_token_is_allowed_over_grpc(authz: stack.Authz) -> None:
    response = check(authz.port, f"Bearer {tokens.token()}")
    assert response.HasField("ok_response")
    assert {h.header.key: h.header.value for h in response.ok_response.headers}[
        "x-user-id"
    ] == "alice"


def test_a_key_added_to_the_jwks_file_is_accepted_without_a_restart(tmp_path: Path) -> None:
    jwks = write_jwks(tmp_path / "jwks.json", rsa_key())
    server = stack.start_authz(
        tmp_path,
        env={"SIDECAR_JWKS": str(jwks), "SIDECAR_JWT_SECRET": ""},
        args=["--jwks-refresh-min", "0.2"],
    )
    with stack.stopping(server.proc):
        newcomer = ec_key("ec-rotated")
        token = jwt.encode(
            {"sub": "zoe", "exp": 4_000_000_000},
            newcomer.private,
            "ES256",
            headers={"kid": newcomer.kid},
        )
        assert check(server.port, f"Bearer {token}").denied_response.status.code == 401
        write_jwks(jwks, rsa_key(), newcomer)
        wait.wait_until(
            lambda: check(server.port, f"Bearer {token}").HasField("ok_response"),
            what="the rotated key accepted",
        )
        assert server.proc.alive()


def http_check(port: int, raw: bytes) -> bytes:
    """Send raw bytes to the HTTP check port; everything it answers until it closes or 2 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        sock.settimeout(2)
        out = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                out += chunk
        return out


def http_request(authorization: str, extra: str = "") -> bytes:
    return (
        f"GET /sidecar-check/svc/1 HTTP/1.1\r\nhost: x\r\n{POLICY_HEADER}: {OPEN_POLICY}\r\n"
        f"authorization: {authorization}\r\n{extra}\r\n"
    ).encode()


def test_the_http_check_port_answers_envoys_protocol(authz: stack.Authz) -> None:
    allowed = http_check(
        authz.check_port, http_request(f"Bearer {tokens.token()}", "connection: close\r\n")
    )
    assert allowed.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nx-user-id: alice\r\n" in allowed
    # Pipelined on one kept-alive connection; the 64 KiB token is a quick 401.
    both = http_check(
        authz.check_port,
        http_request("Bearer " + "a" * 65536) + http_request("Basic x", "connection: close\r\n"),
    )
    assert both.count(b"HTTP/1.1 401 Unauthorized\r\n") == 2
    garbage = http_check(authz.check_port, b"\x00\x01 hello\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"error":"bad_request"' in garbage
    assert authz.proc.alive()
