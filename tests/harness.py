"""Real processes for end-to-end tests: the xDS server, Envoy, and polling helpers.

Every process is started by a test, stopped by the same test by its PID, and its output kept in
the test's temporary directory so a failure can show it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ext_authz.tokens import mint
from sidecar.bootstrap import BootstrapOptions, render_json
from sidecar.processes import find_envoy

T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in a test run.

    A port is handed out before its server binds it (Envoy binds its listener only when xDS
    delivers it), so without the memory a second call could return the same port meanwhile.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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

    def synced(self, node_id: str) -> bool:
        """Whether `node_id` is connected and has ACKed the current version of every type."""
        status = self.status()
        return any(
            p["node_id"] == node_id
            and len(p["types"]) == 4
            and all(t["state"] == "SYNCED" for t in p["types"].values())
            for p in status["proxies"]
        )


def start_xds(
    catalog: Path,
    workdir: Path,
    name: str = "xds",
    module: str = "xds_server",
    ports: tuple[int, int, int] | None = None,
) -> XdsServer:
    """The xDS server (or `module`, run with the same flags) on `ports` (gRPC, HTTP, Envoy's
    listener), by default new ones."""
    port, http_port, listener_port = ports or (free_port(), free_port(), free_port())
    proc = start(
        name,
        [
            sys.executable,
            "-m",
            module,
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


@dataclass
class Authz:
    proc: Proc
    port: int
    http_port: int

    def metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.http_port}/metrics").body.decode()

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.proc.output().splitlines():
            if line.startswith("{") and '"audit":true' in line:
                lines.append(json.loads(line))
        return lines


TEST_SECRET = b"test-secret-that-is-long-enough-for-hs256!"


def start_authz(
    workdir: Path,
    name: str = "authz",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    args: list[str] | None = None,
) -> Authz:
    """ext_authz with the test secret (unless `env` or `args` configure other keys)."""
    port = port or free_port()
    http_port = free_port()
    full_env = dict(os.environ)
    full_env.setdefault("SIDECAR_JWT_SECRET", TEST_SECRET.decode())
    full_env.update(env or {})
    proc = start(
        name,
        [
            sys.executable,
            "-m",
            "ext_authz",
            "--authz-host",
            "127.0.0.1",
            "--authz-port",
            str(port),
            "--authz-http-port",
            str(http_port),
            *(args or []),
        ],
        workdir,
        env=full_env,
    )

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"ext_authz exited:\n{proc.output()}")
        return try_get(f"http://127.0.0.1:{http_port}/metrics") is not None

    wait_until(up, timeout=20, what="ext_authz's metrics page")
    return Authz(proc, port, http_port)


def token(
    sub: str = "alice",
    roles: list[str] | None = None,
    tenant: str | None = "globex",
    secret: bytes = TEST_SECRET,
    ttl_s: int = 600,
) -> str:
    return mint(
        secret, sub=sub, roles=["admin"] if roles is None else roles, tenant=tenant, ttl_s=ttl_s
    )


def bearer(tok: str | None = None, **kw: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token(**kw) if tok is None else tok}"}


def start_envoy(
    xds: XdsServer,
    workdir: Path,
    node_id: str = "test-envoy",
    authz_port: int = 9191,
    *,
    delta: bool = False,
    wait: bool = True,
) -> Envoy:
    """Envoy fed by `xds`; with `wait`, returned once Envoy says it is ready."""
    admin_port = free_port()
    bootstrap = workdir / f"{node_id}.json"
    bootstrap.write_text(
        render_json(
            BootstrapOptions(
                node_id=node_id,
                xds_port=xds.port,
                admin_port=admin_port,
                authz_port=authz_port,
                delta=delta,
            )
        )
    )
    proc = start(
        node_id,
        [find_envoy(), "-c", str(bootstrap), "--use-dynamic-base-id", "-l", "warning"],
        workdir,
    )
    envoy = Envoy(proc, admin_port, xds.listener_port, node_id)
    if not wait:
        return envoy

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


class TcpProxy:
    """A loopback TCP proxy to a real server that a test can cut and restore (an outage)."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._server is not None:
            with suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
