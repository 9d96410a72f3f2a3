"""`sidecar up --demo`: the Quick start's first command, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.conftest import SAMPLE, sample_data

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    port = harness.free_port()
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_JWT", "SIDECAR_JWKS"))}
    env.update(
        SIDECAR_LISTENER_PORT=str(port),
        SIDECAR_ADMIN_PORT=str(harness.free_port()),
        SIDECAR_XDS_PORT=str(harness.free_port()),
        SIDECAR_XDS_HTTP_PORT=str(harness.free_port()),
        SIDECAR_AUTHZ_PORT=str(harness.free_port()),
        SIDECAR_AUTHZ_HTTP_PORT=str(harness.free_port()),
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "up", "--demo", "--catalog", str(SAMPLE)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    lines: list[str] = []

    def printed_try() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sidecar up exited:\n{log.read_text()}")
        lines[:] = log.read_text().splitlines()
        return any("curl" in line for line in lines)

    try:
        harness.wait_until(printed_try, timeout=45, what="sidecar up to print a curl")
        yield proc, port, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def test_up_demo_serves_every_sample_service_and_prints_a_working_curl(
    up: tuple[subprocess.Popen[str], int, list[str]],
) -> None:
    _, port, lines = up
    with_token, without = [line.strip() for line in lines if line.strip().startswith("curl")]
    url = re.search(r"http://\S+", with_token)
    token = re.search(r"Authorization: Bearer (\S+)'", with_token)
    assert url is not None and token is not None
    resp = harness.get(url.group(0), {"authorization": f"Bearer {token.group(1)}"})
    assert resp.status == 200
    assert resp.json()["headers"]["x-user-id"] == "demo-user"
    assert harness.get(url.group(0)).status == 401
    assert without.endswith(url.group(0))
    secret = next(line for line in lines if "SIDECAR_JWT_SECRET=" in line).split("=", 1)[1]
    for svc in sample_data()["services"]:
        auth = harness.bearer(secret=secret.encode(), tenant="globex")
        seen = harness.get(f"http://127.0.0.1:{port}{svc['base_path']}/x", auth).json()
        assert seen["service"] == svc["service_name"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_up_leaves_no_child_running(
    up: tuple[subprocess.Popen[str], int, list[str]], sig: signal.Signals
) -> None:
    proc, _, _ = up
    children = children_of(proc.pid)
    assert len(children) == 4  # demo upstreams, ext_authz, xds server, envoy
    proc.send_signal(sig)
    proc.wait(timeout=20)
    harness.wait_until(
        lambda: not any(alive(pid) for pid in children), timeout=15, what="every child gone"
    )


def test_up_refuses_an_invalid_catalog_and_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"services": [{"service_name": "x", "base_path": "x", "internal_url": "h"}]}')
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "up", "--catalog", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "services[0].base_path: must start with '/'" in result.stderr
