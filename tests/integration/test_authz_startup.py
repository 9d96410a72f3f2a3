"""ext-authz that cannot start says why and leaves nothing behind: an address already in use is
named in one line on stderr (no traceback) and the exit status is 1, whether what holds it lets
others share the port or not; what `app.run` opened before the failure (the audit file, the
Redis client, the servers already listening, their threads) is released through its ExitStack.
Two secrets at once are refused the same way by the server and by `sidecar token`."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ext_authz import app, settings
from tests.support import ports, redis_servers, stack, tokens, wait
from tests.support.policies import POLICY_KEY_ENV

PORT_FLAGS = ("--authz-port", "--authz-http-check-port", "--authz-http-port")
SECRET = {"SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode(), **POLICY_KEY_ENV}


def listen_args(flag: str, taken: int) -> list[str]:
    """Every address on loopback, `flag`'s port the `taken` one and the others free."""
    args = ["--authz-host", "127.0.0.1", "--authz-http-host", "127.0.0.1"]
    for name in PORT_FLAGS:
        args += [name, str(taken if name == flag else ports.free_port())]
    return args


def names_address(line: str, port: int) -> bool:
    """`line` names 127.0.0.1 and `port` together ("127.0.0.1:9001" or "('127.0.0.1', 9001)")."""
    return re.search(rf"127\.0\.0\.1'?(:|, ){port}\b", line) is not None


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def started(before: set[threading.Thread]) -> list[str]:
    """The threads running now that were not before."""
    return sorted(t.name for t in threading.enumerate() if t not in before)


def open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile (the one iterdir itself used)
    return found


@pytest.mark.parametrize("holder", ports.HOLDERS)
@pytest.mark.parametrize("flag", PORT_FLAGS)
def test_a_port_already_in_use_is_a_start_up_error_naming_the_address(
    flag: str, holder: str
) -> None:
    with ports.taken_port(holder) as port:
        result = stack.run_authz_to_exit(SECRET, *listen_args(flag, port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("ext-authz: ")]
    assert len(said) == 1, result.stderr
    assert names_address(said[0], port), said[0]


@pytest.mark.parametrize("flag", PORT_FLAGS)
def test_a_failed_start_releases_everything_it_opened(flag: str, tmp_path: Path) -> None:
    redis = redis_servers.start_redis(tmp_path)
    audit = tmp_path / "audit.jsonl"
    try:
        with ports.taken_port() as port:
            args = listen_args(flag, port)
            conf = settings.parse(
                [
                    *args,
                    *("--audit-file", str(audit)),
                    *("--rate-limit-backend", "redis"),
                    *("--redis-url", f"redis://127.0.0.1:{redis.port}/0"),
                ],
                environ=SECRET,
            )
            before = set(threading.enumerate())
            with pytest.raises(OSError) as caught:
                app.run(conf, logging.getLogger("test-authz-startup"), threading.Event())
        with redis.client() as admin:
            clients = admin.client_list()
    finally:
        redis.stop()
    assert names_address(str(caught.value), port), caught.value
    assert audit.exists()  # it was opened before the failure, then closed
    assert str(audit) not in open_files()
    try:
        wait.wait_until(lambda: not started(before), timeout=5, what="the start's threads to end")
    except AssertionError:
        pytest.fail(f"threads of the failed start still run: {started(before)}")
    others = [int(args[i + 1]) for i, arg in enumerate(args) if arg in PORT_FLAGS and arg != flag]
    assert all(bindable(p) for p in others), others
    assert len(clients) == 1  # only the one asking: the start's connections to Redis are closed


@pytest.mark.parametrize("given_as", ["flags", "variables"])
def test_a_secret_and_a_secret_file_together_are_refused_alike_by_the_server_and_token(
    given_as: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(tokens.TEST_SECRET)
    both = {
        "SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode(),
        "SIDECAR_JWT_SECRET_FILE": str(secret_file),
    }
    flags = ["--jwt-secret", both["SIDECAR_JWT_SECRET"], "--jwt-secret-file", str(secret_file)]
    env, args = (both, []) if given_as == "variables" else ({}, flags)

    server = stack.run_authz_to_exit(env, *args)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    token = subprocess.run(
        [sys.executable, "-m", "sidecar", "token", "--sub", "alice", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **env},
        check=False,
    )

    assert (server.returncode, token.returncode) == (1, 1)
    assert token.stdout == ""  # no token minted
    said = [line for line in server.stderr.splitlines() if line.startswith("ext-authz: ")]
    assert len(said) == 1, server.stderr
    reason = said[0].removeprefix("ext-authz: ")
    assert token.stderr == f"sidecar token: {reason}\n"
    assert re.search(r"\bSIDECAR_JWT_SECRET\b", reason), reason
    assert "SIDECAR_JWT_SECRET_FILE" in reason
    assert "not both" in reason
