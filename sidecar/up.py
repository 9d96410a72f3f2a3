"""`sidecar up`: xDS server, Envoy and (with --demo) echo upstreams, in the foreground."""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.bootstrap import BootstrapOptions, render_json
from sidecar.processes import Supervisor, find_envoy
from xds_server.catalog import Catalog

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class UpSettings:
    catalog: Path
    demo: bool
    listener_port: int
    admin_port: int
    xds_port: int
    xds_http_port: int
    node_id: str
    node_cluster: str
    envoy_log_level: str
    startup_timeout_s: float


def demo_upstreams(catalog: Catalog) -> list[str]:
    """`name=host:port` for every loopback URL in the catalog, each address once."""
    specs: dict[str, str] = {}
    for svc in catalog.services:
        for url in svc.urls:
            parts = urlsplit(url)
            if parts.hostname in LOOPBACK and parts.scheme == "http":
                specs.setdefault(f"{parts.hostname}:{parts.port}", svc.service_name)
    return [f"{name}={address}" for address, name in specs.items()]


def _wait_for(what: str, check: Callable[[], bool], sup: Supervisor, deadline: float) -> None:
    while time.monotonic() < deadline:
        dead = sup.exited()
        if dead is not None:
            raise RuntimeError(f"{dead.name} exited with status {dead.process.returncode}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
            return int(resp.status) == 200
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run(conf: UpSettings, catalog: Catalog, out: Callable[[str], None] = print) -> int:
    sup = Supervisor()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-up-"))
    env = dict(os.environ)
    deadline = time.monotonic() + conf.startup_timeout_s
    try:
        if conf.demo:
            specs = demo_upstreams(catalog)
            if specs:
                sup.start("demo upstreams", [sys.executable, "-m", "sidecar.echo", *specs], env=env)
                out(f"demo upstreams: {', '.join(specs)}")
        sup.start(
            "xds-server",
            [
                sys.executable,
                "-m",
                "xds_server",
                "--catalog",
                str(conf.catalog),
                "--xds-host",
                "127.0.0.1",
                "--xds-port",
                str(conf.xds_port),
                "--xds-http-port",
                str(conf.xds_http_port),
                "--listener-port",
                str(conf.listener_port),
            ],
            env=env,
        )
        _wait_for(
            "the xDS server",
            lambda: _http_ok(f"http://127.0.0.1:{conf.xds_http_port}/ready"),
            sup,
            deadline,
        )
        bootstrap = workdir / "envoy.json"
        bootstrap.write_text(
            render_json(
                BootstrapOptions(
                    node_id=conf.node_id,
                    node_cluster=conf.node_cluster,
                    xds_port=conf.xds_port,
                    admin_port=conf.admin_port,
                )
            )
        )
        sup.start(
            "envoy",
            [
                find_envoy(env),
                "-c",
                str(bootstrap),
                "--use-dynamic-base-id",
                "-l",
                conf.envoy_log_level,
            ],
            env=env,
        )
        _wait_for(
            "Envoy's listener",
            lambda: (
                _http_ok(f"http://127.0.0.1:{conf.admin_port}/ready")
                and _port_open(conf.listener_port)
            ),
            sup,
            deadline,
        )
        base = f"http://127.0.0.1:{conf.listener_port}"
        first = catalog.services[0] if catalog.services else None
        out("")
        out(f"Envoy:        {base}")
        out(f"Envoy admin:  http://127.0.0.1:{conf.admin_port}")
        out(f"xDS status:   http://127.0.0.1:{conf.xds_http_port}/status")
        out(f"catalog:      {conf.catalog} (edits apply live)")
        if first is not None:
            out("")
            out("Try:")
            out(f"  curl -i {base}{first.route_prefix.rstrip('/')}/hello")
        out("")
        out("Ctrl-C stops everything.")
        sys.stdout.flush()
        while not stop.is_set():
            dead = sup.exited()
            if dead is not None:
                out(f"{dead.name} exited with status {dead.process.returncode}; stopping")
                return 1
            stop.wait(0.2)
        return 0
    except (RuntimeError, FileNotFoundError) as err:
        print(f"sidecar up: {err}", file=sys.stderr)
        return 1
    finally:
        sup.stop_all()
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
