"""Real processes for tests: the xDS server, ext_authz and Envoy, started with the project's own
command-line builders (`sidecar.commands`) and stopped by PID with its supervisor's `stop`.

Every process is started by a test and stopped by the same test; its output is kept in the
test's temporary directory so that a failure can show it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import commands
from sidecar.bootstrap import BootstrapOptions, render_json
from sidecar_shared import defaults, supervise
from tests.support.http import Response, get, try_get
from tests.support.policies import POLICY_KEY, POLICY_KEY_ENV
from tests.support.ports import free_port
from tests.support.tokens import TEST_SECRET
from tests.support.translation import build_snapshot
from tests.support.wait import wait_until
from xds_server import typeurls
from xds_server.catalog import load_catalog
from xds_server.resources.common import LISTENER_NAME, ROUTE_CONFIG_NAME
from xds_server.snapshot import Snapshot
from xds_server.translate import AuthzOptions, Options

# The xDS protocols an Envoy can speak: tests that exercise xDS run with each.
PROTOCOLS = ("sotw", "delta")


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
        return supervise.stop(self.popen, sig, timeout)


def start(name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as handle:
        popen = supervise.spawn(argv, env=env, stdout=handle)
    return Proc(name, popen, log)


@contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


@dataclass
class XdsServer:
    proc: Proc
    port: int
    http_port: int
    listener_port: int
    catalog: Path
    transport: str = defaults.AUTHZ_TRANSPORT  # how its Envoys call ext_authz

    def status(self) -> Any:
        return get(f"http://127.0.0.1:{self.http_port}/status").json()

    def metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.http_port}/metrics").body.decode()

    def version(self) -> str | None:
        version: str | None = self.status()["version"]
        return version

    def status_command(self) -> subprocess.CompletedProcess[str]:
        """`sidecar status` against this server, as an operator runs it."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "status",
                "--xds-http",
                f"127.0.0.1:{self.http_port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def snapshot(self, catalog: Path | None = None) -> Snapshot:
        """The snapshot the catalog file (or `catalog`) becomes, built here: versions are
        content hashes, so these are the versions the server serves for it."""
        options = Options(
            listener_address="127.0.0.1",
            listener_port=self.listener_port,
            authz=AuthzOptions(policy_key=POLICY_KEY),
        )
        return build_snapshot(load_catalog(catalog or self.catalog), options)

    def route_version_for(self, envoy: Envoy, snapshot: Snapshot | None = None) -> str:
        """What `envoy.route_version()` shows once it has the routes of `snapshot` (by default
        the catalog file's)."""
        snapshot = snapshot or self.snapshot()
        if envoy.delta:
            return snapshot.resources[typeurls.ROUTE][ROUTE_CONFIG_NAME].version
        return snapshot.versions[typeurls.ROUTE]

    def synced(self, node_id: str) -> bool:
        """Whether `node_id` is connected and has ACKed the current version of every type."""
        status = self.status()
        return any(
            p["node_id"] == node_id
            and len(p["types"]) == 4
            and all(t["state"] == "SYNCED" for t in p["types"].values())
            for p in status["proxies"]
        )


# The test's own Envoys are the only peers of a server on loopback: they may veto a version
# without client certificates (`fleet`), as on a network where no one else reaches the port.
VETO_UNAUTHENTICATED = ["--xds-unauthenticated-veto", "true"]


def start_xds(
    catalog: Path,
    workdir: Path,
    name: str = "xds",
    module: str = "xds_server",
    ports: tuple[int, int, int] | None = None,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    transport: str = defaults.AUTHZ_TRANSPORT,
) -> XdsServer:
    """The xDS server (or `module`, run with the same flags) on `ports` (gRPC, HTTP, Envoy's
    listener), by default new ones, with more flags in `args` and variables in `env`,
    configuring Envoy to call ext_authz over `transport`.

    Envoy's listener port is 0 unless `ports` names one: each Envoy binds a port the OS
    chooses at the moment it binds (`Envoy.listener_port` reads it from its admin). A port
    chosen earlier and bound only when xDS delivers the listener could meanwhile be taken by a
    server the test starts (an upstream binding port 0), and requests meant for Envoy would
    reach that server instead. Several Envoys on one host cannot share a port anyway."""
    port, http_port, listener_port = ports or (free_port(), free_port(), 0)
    argv = commands.xds_server(
        *("--catalog", str(catalog)),
        *("--xds-host", "127.0.0.1", "--xds-port", str(port)),
        *("--xds-http-port", str(http_port)),
        *("--listener-address", "127.0.0.1", "--listener-port", str(listener_port)),
        *("--authz-transport", transport),
        *(args or []),
        module=module,
    )
    # Its own state directory (docs/xds.md), kept by a restart of the same `name` in `workdir`.
    state = {"SIDECAR_STATE_DIR": str(workdir / f"{name}-state")}
    proc = start(name, argv, workdir, env={**os.environ, **POLICY_KEY_ENV, **state, **(env or {})})
    server = XdsServer(proc, port, http_port, listener_port, catalog, transport)

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"xds server exited:\n{proc.output()}")
        return try_get(f"http://127.0.0.1:{http_port}/status") is not None

    wait_until(up, timeout=20, what="the xDS server's status page")
    return server


@dataclass
class Authz:
    proc: Proc
    port: int  # gRPC
    http_port: int  # metrics and ready
    check_port: int  # HTTP checks

    def port_for(self, transport: str) -> int:
        """The port Envoy calls for checks over `transport`."""
        return self.check_port if transport == "http" else self.port

    def metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.http_port}/metrics").body.decode()

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.proc.output().splitlines():
            if line.startswith("{") and '"audit":true' in line:
                lines.append(json.loads(line))
        return lines


def start_authz(
    workdir: Path,
    name: str = "authz",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    args: list[str] | None = None,
    check_port: int | None = None,
) -> Authz:
    """ext_authz with the test secret (unless `env` or `args` configure other keys), serving
    gRPC on `port` and HTTP checks on `check_port` (by default new ones)."""
    port = port or free_port()
    http_port = free_port()
    check_port = check_port or free_port()
    full_env = dict(os.environ)
    full_env.setdefault("SIDECAR_JWT_SECRET", TEST_SECRET.decode())
    full_env.update(POLICY_KEY_ENV)
    full_env.update(env or {})
    argv = commands.ext_authz(
        *("--authz-host", "127.0.0.1", "--authz-port", str(port)),
        *("--authz-http-port", str(http_port)),
        *("--authz-http-check-port", str(check_port)),
        *(args or []),
    )
    proc = start(name, argv, workdir, env=full_env)

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"ext_authz exited:\n{proc.output()}")
        resp = try_get(f"http://127.0.0.1:{http_port}/ready")
        return resp is not None and resp.status == 200

    wait_until(up, timeout=20, what="ext_authz to be ready")
    return Authz(proc, port, http_port, check_port)


@dataclass
class Envoy:
    proc: Proc
    admin_port: int
    configured_port: int  # the listener port xDS gives it; 0: one the OS chooses
    node_id: str
    delta: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def listener_port(self) -> int:
        """The port Envoy's listener is bound to (waited for, and then remembered)."""
        if not self.configured_port:
            self.configured_port = wait_until(
                lambda: bound_port(self.admin_port), timeout=20, what="Envoy's listener bound"
            )
        return self.configured_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def admin(self, path: str) -> Response:
        return get(f"http://127.0.0.1:{self.admin_port}{path}")

    def config_dump(self) -> Any:
        return self.admin("/config_dump").json()

    def route_version(self) -> str | None:
        """The version Envoy shows for its route configuration: the type's version under
        SotW, the resource's own under Delta (`XdsServer.route_version_for` says which)."""
        for section in self.config_dump()["configs"]:
            for rc in section.get("dynamic_route_configs", []):
                version: str = rc["version_info"]
                return version
        return None

    def clusters_version(self) -> str | None:
        """The clusters' version Envoy last accepted (the type's version, either protocol)."""
        for section in self.config_dump()["configs"]:
            if section["@type"].endswith("ClustersConfigDump"):
                version: str | None = section.get("version_info")
                return version
        return None


def start_envoy(
    xds: XdsServer,
    workdir: Path,
    node_id: str = "test-envoy",
    authz: Authz | None = None,
    *,
    authz_port: int | None = None,
    delta: bool = False,
    wait: bool = True,
    args: list[str] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Envoy:
    """Envoy fed by `xds`, calling `authz` (or whatever listens on `authz_port`) over the
    transport `xds` configures; with `wait`, returned once Envoy says it is ready; `args` are
    more command-line flags; `edit` changes the bootstrap (a dict) before it is written."""
    if authz_port is None:
        authz_port = authz.port_for(xds.transport) if authz is not None else free_port()
    admin_port = free_port()
    bootstrap = workdir / f"{node_id}.json"
    text = render_json(
        BootstrapOptions(
            node_id=node_id,
            xds_port=xds.port,
            admin_port=admin_port,
            authz_port=authz_port,
            authz_http_check_port=authz_port,
            authz_transport=xds.transport,
            delta=delta,
        )
    )
    if edit is not None:
        config = json.loads(text)
        edit(config)
        text = json.dumps(config)
    bootstrap.write_text(text)
    argv = commands.envoy(supervise.find_envoy(), bootstrap, "warning") + (args or [])
    proc = start(node_id, argv, workdir)
    envoy = Envoy(proc, admin_port, xds.listener_port, node_id, delta)
    if not wait:
        return envoy

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"envoy exited:\n{proc.output()}")
        resp = try_get(f"http://127.0.0.1:{admin_port}/ready")
        return resp is not None and resp.status == 200

    wait_until(ready, timeout=20, what="Envoy to be ready")
    return envoy


def bound_port(admin_port: int) -> int | None:
    """The port Envoy's listener is bound to, from its admin; None before it is."""
    resp = try_get(f"http://127.0.0.1:{admin_port}/listeners?format=json")
    if resp is None or resp.status != 200:
        return None
    for listener in resp.json().get("listener_statuses", []):
        if listener.get("name") == LISTENER_NAME:
            port = int(listener["local_address"]["socket_address"].get("port_value", 0))
            return port or None
    return None


def run_authz_to_exit(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """ext_authz run in the foreground with only `env` for SIDECAR_* settings, for a start-up
    that should fail: its exit status and what it printed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    argv = commands.ext_authz(
        *("--authz-port", str(free_port()), "--authz-http-port", str(free_port())),
        *("--authz-http-check-port", str(free_port())),
        *args,
    )
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **POLICY_KEY_ENV, **env},
        check=False,
    )


def wait_for_route(envoy: Envoy, path: str, status: int = 401) -> None:
    """Until Envoy answers `path` (without a token) with `status`: its route is in place."""
    wait_until(
        lambda: (r := try_get(envoy.url + path)) is not None and r.status == status,
        what=f"{path} to answer {status}",
    )
