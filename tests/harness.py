"""Real processes for end-to-end tests: the xDS server, Envoy, and polling helpers.

Every process is started by a test, stopped by the same test by its PID, and its output kept in
the test's temporary directory so a failure can show it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sidecar.bootstrap import BootstrapOptions, render_json
from sidecar.processes import find_envoy

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last: {last!r}")


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Response:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(
                resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
            )
    except urllib.error.HTTPError as err:
        return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def get(url: str, headers: Mapping[str, str] | None = None) -> Response:
    return http("GET", url, headers)


def try_get(url: str, headers: Mapping[str, str] | None = None) -> Response | None:
    try:
        return get(url, headers)
    except OSError:
        return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)


def start(name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    handle.close()
    return Proc(name, popen, log)


@dataclass
class XdsServer:
    proc: Proc
    port: int
    http_port: int
    listener_port: int
    catalog: Path

    def status(self) -> Any:
        return get(f"http://127.0.0.1:{self.http_port}/status").json()

    def metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.http_port}/metrics").body.decode()

    def version(self) -> str | None:
        version: str | None = self.status()["version"]
        return version


def start_xds(catalog: Path, workdir: Path, name: str = "xds") -> XdsServer:
    port, http_port, listener_port = free_port(), free_port(), free_port()
    proc = start(
        name,
        [
            sys.executable,
            "-m",
            "xds_server",
            "--catalog",
            str(catalog),
            "--xds-host",
            "127.0.0.1",
            "--xds-port",
            str(port),
            "--xds-http-port",
            str(http_port),
            "--listener-address",
            "127.0.0.1",
            "--listener-port",
            str(listener_port),
        ],
        workdir,
    )
    server = XdsServer(proc, port, http_port, listener_port, catalog)

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"xds server exited:\n{proc.output()}")
        return try_get(f"http://127.0.0.1:{http_port}/status") is not None

    wait_until(up, timeout=20, what="the xDS server's status page")
    return server


@dataclass
class Envoy:
    proc: Proc
    admin_port: int
    listener_port: int
    node_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def admin(self, path: str) -> Response:
        return get(f"http://127.0.0.1:{self.admin_port}{path}")

    def config_dump(self) -> Any:
        return self.admin("/config_dump").json()

    def route_version(self) -> str | None:
        for section in self.config_dump()["configs"]:
            for rc in section.get("dynamic_route_configs", []):
                version: str = rc["version_info"]
                return version
        return None


def start_envoy(xds: XdsServer, workdir: Path, node_id: str = "test-envoy") -> Envoy:
    admin_port = free_port()
    bootstrap = workdir / f"{node_id}.json"
    bootstrap.write_text(
        render_json(BootstrapOptions(node_id=node_id, xds_port=xds.port, admin_port=admin_port))
    )
    proc = start(
        node_id,
        [find_envoy(), "-c", str(bootstrap), "--use-dynamic-base-id", "-l", "warning"],
        workdir,
    )
    envoy = Envoy(proc, admin_port, xds.listener_port, node_id)

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"envoy exited:\n{proc.output()}")
        resp = try_get(f"http://127.0.0.1:{admin_port}/ready")
        return resp is not None and resp.status == 200

    wait_until(ready, timeout=20, what="Envoy to be ready")
    return envoy


@contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()
