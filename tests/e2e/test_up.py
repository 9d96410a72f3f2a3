"""`sidecar up --demo`: the Quick start's first command, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

import pytest

from sidecar_shared import defaults
from sidecar_shared.contract import AUTHZ_TRANSPORTS
from tests.support import http, ports, tokens, wait
from tests.support.catalogs import SAMPLE, sample_data, write_catalog
from tests.support.upstreams import Upstream


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


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def child_running(parent: int, module: str) -> int | None:
    """The pid of `parent`'s live child whose command line names `module`."""
    for pid in children_of(parent):
        if module in command_of(pid) and alive(pid):
            return pid
    return None


def up_env(
    listener_port: int, xds_http_port: int, transport: str = defaults.AUTHZ_TRANSPORT
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_JWT", "SIDECAR_JWKS"))}
    env.update(
        SIDECAR_LISTENER_PORT=str(listener_port),
        SIDECAR_ADMIN_PORT=str(ports.free_port()),
        SIDECAR_XDS_PORT=str(ports.free_port()),
        SIDECAR_XDS_HTTP_PORT=str(xds_http_port),
        SIDECAR_AUTHZ_PORT=str(ports.free_port()),
        SIDECAR_AUTHZ_HTTP_PORT=str(ports.free_port()),
        SIDECAR_AUTHZ_HTTP_CHECK_PORT=str(ports.free_port()),
        SIDECAR_AUTHZ_TRANSPORT=transport,
    )
    return env


@dataclass
class Up:
    proc: subprocess.Popen[str]
    port: int  # Envoy's listener
    xds_http_port: int
    lines: list[str]  # what it printed until ready


@pytest.fixture
def transport() -> str:
    return defaults.AUTHZ_TRANSPORT


@pytest.fixture
def xds_protocol() -> str:
    return "sotw"


@pytest.fixture
def up(tmp_path: Path, transport: str, xds_protocol: str) -> Iterator[Up]:
    """`sidecar up --demo`, Envoy calling ext_authz over `transport` and speaking
    `xds_protocol` to the xDS server (each a fixture a test may parametrize)."""
    port, xds_http_port = ports.free_port(), ports.free_port()
    log = tmp_path / "up.log"
    env = up_env(port, xds_http_port, transport)
    env["SIDECAR_XDS_PROTOCOL"] = xds_protocol
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
        wait.wait_until(printed_try, timeout=45, what="sidecar up to print a curl")
        yield Up(proc, port, xds_http_port, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


@pytest.mark.parametrize(
    ("transport", "xds_protocol"),
    [(t, "sotw") for t in AUTHZ_TRANSPORTS] + [(defaults.AUTHZ_TRANSPORT, "delta")],
)
def test_up_demo_serves_every_sample_service_and_prints_a_working_curl(
    up: Up, transport: str, xds_protocol: str
) -> None:
    (proxy,) = http.get(f"http://127.0.0.1:{up.xds_http_port}/status").json()["proxies"]
    assert proxy["protocol"] == xds_protocol
    port, lines = up.port, up.lines
    # Envoy's ext_authz filter (xDS) and cluster (bootstrap) both follow the setting: a
    # mismatch would answer 503 below.
    assert any(f"Envoy uses {transport}" in line for line in lines)
    with_token, without = [line.strip() for line in lines if line.strip().startswith("curl")]
    url = re.search(r"http://\S+", with_token)
    token = re.search(r"Authorization: Bearer (\S+)'", with_token)
    assert url is not None and token is not None
    resp = http.get(url.group(0), {"authorization": f"Bearer {token.group(1)}"})
    assert resp.status == 200
    assert resp.json()["headers"]["x-user-id"] == "demo-user"
    assert http.get(url.group(0)).status == 401
    assert without.endswith(url.group(0))
    secret = next(line for line in lines if "SIDECAR_JWT_SECRET=" in line).split("=", 1)[1]
    for svc in sample_data()["services"]:
        auth = tokens.bearer(secret=secret.encode(), tenant="globex")
        seen = http.get(f"http://127.0.0.1:{port}{svc['base_path']}/x", auth).json()
        assert seen["service"] == svc["service_name"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_up_leaves_no_child_running(up: Up, sig: signal.Signals) -> None:
    proc = up.proc
    children = children_of(proc.pid)
    assert len(children) == 4  # demo upstreams, ext_authz, xds server, envoy
    proc.send_signal(sig)
    proc.wait(timeout=20)
    wait.wait_until(
        lambda: not any(alive(pid) for pid in children), timeout=15, what="every child gone"
    )


class Load:
    """Requests one after another from a thread until stopped (bounded: 60 s at most)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)

    def _run(self, url: str, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.statuses.append(http.http("GET", url, headers, timeout=2).status)
            except OSError:
                self.statuses.append(0)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def secret_of(lines: list[str]) -> bytes:
    return next(line for line in lines if "SIDECAR_JWT_SECRET=" in line).split("=", 1)[1].encode()


def admin_load(up: Up) -> Load:
    """Requests to a protected route, with a token the demo key signed."""
    auth = tokens.bearer(secret=secret_of(up.lines), roles=["admin"])
    return Load(f"http://127.0.0.1:{up.port}/orders/admin/x", auth)


def kill_and_await_restart(parent: int, module: str) -> int:
    """SIGKILL `parent`'s child running `module`; return the pid of the one that replaces it."""
    old = child_running(parent, module)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    new: int = wait.wait_until(
        lambda: (pid := child_running(parent, module)) != old and pid,
        what=f"a new {module}",
    )
    return new


def test_a_killed_control_plane_is_restarted_while_envoy_keeps_serving(up: Up) -> None:
    proc = up.proc
    envoy = child_running(proc.pid, "envoy -c")
    status_url = f"http://127.0.0.1:{up.xds_http_port}/status"
    with admin_load(up) as load:
        wait.wait_until(lambda: len(load.statuses) >= 20, what="traffic flowing")
        kill_and_await_restart(proc.pid, "xds_server")
        wait.wait_until(
            lambda: (
                (r := http.try_get(status_url)) is not None
                and all(
                    t["state"] == "SYNCED" for p in r.json()["proxies"] for t in p["types"].values()
                )
                and len(r.json()["proxies"]) == 1
            ),
            what="Envoy synced with the new server",
        )
        served_during = len(load.statuses)
    assert set(load.statuses) == {200}, "every request answered while the server was away"
    assert served_during >= 20
    assert envoy is not None and child_running(proc.pid, "envoy -c") == envoy
    assert proc.poll() is None


def test_a_killed_ext_authz_is_restarted_and_traffic_recovers(up: Up, tmp_path: Path) -> None:
    proc = up.proc
    envoy = child_running(proc.pid, "envoy -c")
    with admin_load(up) as load:
        wait.wait_until(lambda: len(load.statuses) >= 20, what="traffic flowing")
        kill_and_await_restart(proc.pid, "ext_authz")
        mark = len(load.statuses)
        wait.wait_until(lambda: load.statuses[mark:].count(200) >= 20, what="traffic allowed again")
    # While ext_authz was away Envoy failed closed (503); nothing else went wrong.
    assert set(load.statuses) <= {200, 503}
    assert envoy is not None and child_running(proc.pid, "envoy -c") == envoy
    assert "ext-authz exited with status -9; restarting" in (tmp_path / "up.log").read_text()


def test_up_fails_with_envoys_reason_when_the_listener_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "up", "--demo", "--catalog", str(SAMPLE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**up_env(port, ports.free_port()), "SIDECAR_STARTUP_TIMEOUT": "30"},
        )
    assert result.returncode == 1
    assert "Envoy rejected its listeners" in result.stderr
    assert "Address already in use" in result.stderr
    assert "curl" not in result.stdout


def test_a_second_up_on_the_same_listener_port_refuses_to_start_and_the_first_keeps_the_traffic(
    up: Up, tmp_path: Path
) -> None:
    # Another stack: its own servers, catalog key and ports, but the first one's listener port.
    env = {**up_env(up.port, ports.free_port()), "SIDECAR_JWT_SECRET": "another-stacks-key-" * 3}
    log = tmp_path / "second.log"
    with admin_load(up) as load:
        wait.wait_until(lambda: len(load.statuses) >= 5, what="traffic flowing")
        with log.open("w") as err:
            second = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "up", "--catalog", str(SAMPLE)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
        try:
            wait.wait_until(lambda: second.poll() is not None, timeout=45, what="it to give up")
        finally:
            if second.poll() is None:
                second.send_signal(signal.SIGTERM)
            out, _ = second.communicate(timeout=20)
        mark = len(load.statuses)
        wait.wait_until(lambda: len(load.statuses) >= mark + 5, what="traffic after it")
    said = [line for line in log.read_text().splitlines() if line.startswith("sidecar up: ")]
    assert second.returncode == 1, log.read_text()
    assert "curl" not in out
    assert len(said) == 1 and f":{up.port}" in said[0], said
    # Every request reached the first stack's Envoy and ext_authz: none met the other key.
    assert set(load.statuses) == {200}, load.statuses


def run_up(catalog: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`sidecar up` expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "up", "--catalog", str(catalog)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def test_up_refuses_an_invalid_catalog_and_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"services": [{"service_name": "x", "base_path": "x", "internal_url": "h"}]}')
    result = run_up(bad)
    assert result.returncode == 1
    assert "services[0].base_path: must start with '/'" in result.stderr


def test_up_refuses_an_unknown_xds_protocol_and_names_the_variable() -> None:
    result = run_up(SAMPLE, {**os.environ, "SIDECAR_XDS_PROTOCOL": "grpc"})
    assert result.returncode == 2
    assert "SIDECAR_XDS_PROTOCOL='grpc': 'grpc' is not one of sotw, delta" in result.stderr


def _one_request(port: int, path: str, headers: dict[str, str]) -> tuple[int, str] | str:
    """(status, its `connection` header) on a new connection, or what went wrong instead."""
    conn = HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, (resp.getheader("connection") or "").lower()
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:  # an empty reply or a reset: the request was cut
        return f"cut: {type(err).__name__}"
    finally:
        conn.close()


def test_sigterm_answers_every_request_in_flight_refuses_new_ones_and_exits_0(
    tmp_path: Path,
) -> None:
    slow = Upstream("slow").start().behave("slow", delay_s=2.0)
    service = {
        "service_name": "slow",
        "base_path": "/slow",
        "internal_url": slow.url,
        "timeout_ms": 10_000,
        "rbac_required": False,
    }
    catalog = write_catalog(tmp_path, [service])
    port = ports.free_port()
    env = {
        **up_env(port, ports.free_port()),
        "SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode(),
        "SIDECAR_DRAIN_TIMEOUT": "10",
    }
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "up", "--catalog", str(catalog)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    in_flight: list[tuple[int, str] | str] = []
    auth = tokens.bearer()
    clients = [
        threading.Thread(
            target=lambda: in_flight.append(_one_request(port, "/slow/x", auth)), daemon=True
        )
        for _ in range(6)
    ]
    try:
        wait.wait_until(
            lambda: proc.poll() is None and "Ctrl-C" in log.read_text(),
            timeout=45,
            what="sidecar up to be ready",
        )
        for client in clients:
            client.start()
        wait.wait_until(lambda: slow.count() >= 6, what="six requests at the upstream")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait.wait_until(lambda: "draining Envoy" in log.read_text(), what="the drain to begin")
        # After the drain began, a new connection is refused, or answered and closed.
        late = _one_request(port, "/elsewhere", {})
        assert late == "refused" or (isinstance(late, tuple) and late[1] == "close"), late
        for client in clients:
            client.join(timeout=20)
        assert [r[0] if isinstance(r, tuple) else r for r in in_flight] == [200] * 6, in_flight
        assert proc.wait(timeout=30) == 0, log.read_text()
        # The drain ended once the last answer was out, well within its 10 s.
        assert time.monotonic() - signalled < 10 + defaults.SERVER_STOP_GRACE_S
        assert "drain over: no client connection open" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        slow.stop()
