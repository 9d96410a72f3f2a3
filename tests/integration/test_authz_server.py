"""The ext-authz process over real gRPC: start-up rules, health, hostile input, key rotation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt

from tests.support import ports, stack, tokens, wait
from tests.support.authz_client import check
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
