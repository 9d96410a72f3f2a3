"""`sidecar up`: xDS server, Envoy and (with --demo) echo upstreams, in the foreground."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ext_authz.tokens import mint
from sidecar import commands, drain, history
from sidecar.bootstrap import BootstrapOptions, ClientTls, render_json
from sidecar.envoy_log import EnvoyLogFilter
from sidecar_shared import defaults
from sidecar_shared.supervise import Supervisor, find_envoy
from xds_server.catalog import Catalog
from xds_server.status import State, StatusDocument, from_json

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class UpSettings:
    catalog: Path
    demo: bool
    listener_port: int
    admin_port: int
    xds_port: int
    xds_http_port: int
    authz_port: int
    authz_http_check_port: int
    authz_transport: str  # how Envoy calls ext_authz: "http" or "grpc"
    authz_http_port: int
    node_id: str
    node_cluster: str
    xds_protocol: str  # sotw or delta
    envoy_log_level: str
    startup_timeout_s: float
    key_configured: bool  # a JWT secret, secret file or JWKS was given, or an issuer to discover
    child_env: Mapping[str, str]  # the servers' settings, as their SIDECAR_* variables
    max_downstream_connections: int = defaults.MAX_DOWNSTREAM_CONNECTIONS
    envoy_max_heap_bytes: int = defaults.ENVOY_MAX_HEAP_BYTES
    drain_timeout_s: float = defaults.DRAIN_TIMEOUT_S  # at a stop, Envoy drains this long at most
    envoy_tls: ClientTls | None = None  # Envoy's client certificate for the servers' TLS ports
    https: bool = False  # the listener speaks HTTPS (--tls-cert, docs/tls.md)


def demo_upstreams(catalog: Catalog) -> list[str]:
    """`name=host:port` for every loopback URL in the catalog, each address once."""
    specs: dict[str, str] = {}
    for svc in catalog.services:
        for name, url in svc.labelled_urls():
            parts = urlsplit(url)
            if parts.hostname in LOOPBACK and parts.scheme == "http":
                specs.setdefault(f"{parts.hostname}:{parts.port}", name)
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


def _http_get(url: str) -> bytes | None:
    """The body of a 200 answer from one of our own loopback URLs, else None."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
            return bytes(resp.read()) if int(resp.status) == 200 else None
    except OSError:
        return None


def _http_ok(url: str) -> bool:
    return _http_get(url) is not None


REQUIRED_TYPES = ("clusters", "listeners", "routes")


def envoy_synced(
    document: StatusDocument, node_id: str, rejected: Callable[[], bool] = lambda: True
) -> bool:
    """Whether our Envoy has ACKed every type of the version served; raises RuntimeError with
    Envoy's own message when it rejected one (a listener that cannot bind, say).

    Another process may name our node too (status lists every stream): a NACK under our node
    id is believed only when `rejected()` says our Envoy rejected something (its own admin),
    so no other process can end `sidecar up` with a text of its choosing."""
    mine = [p for p in document.proxies if p.node_id == node_id]
    nacked = [
        (short, report)
        for proxy in mine
        for short, report in proxy.types.items()
        if report.state is State.NACKED
    ]
    if nacked and rejected():
        short, report = nacked[0]
        raise RuntimeError(f"Envoy rejected its {short}: {report.error}")
    return any(
        all(short in proxy.types for short in REQUIRED_TYPES) and proxy.state is State.SYNCED
        for proxy in mine
    )


def _envoy_rejected(admin_port: int) -> bool:
    """Whether our Envoy counts a rejected xDS update (`*.update_rejected`), by its admin."""
    body = _http_get(f"http://127.0.0.1:{admin_port}/stats?filter=update_rejected$")
    if body is None:
        return False
    for line in body.decode().splitlines():
        _, _, value = line.partition(":")
        if value.strip().isdigit() and int(value) > 0:
            return True
    return False


def _listening(admin_port: int) -> bool:
    """Envoy's own count of listeners that are bound and serving."""
    body = _http_get(
        f"http://127.0.0.1:{admin_port}/stats?filter=^listener_manager.total_listeners_active$"
    )
    if body is None:
        return False
    _, _, value = body.decode().partition(":")
    return value.strip().isdigit() and int(value) > 0


def _envoy_ready(conf: UpSettings) -> bool:
    raw = _http_get(f"http://127.0.0.1:{conf.xds_http_port}/status")
    if raw is None:
        return False
    try:
        document = from_json(json.loads(raw))
    except ValueError as err:
        raise RuntimeError(f"cannot read the xDS server's status: {err}") from None
    if not envoy_synced(document, conf.node_id, lambda: _envoy_rejected(conf.admin_port)):
        return False
    return _listening(conf.admin_port)


def _demo_token(secret: str, catalog: Catalog) -> tuple[str, str]:
    """A path and a token that the sample catalog lets through."""
    first = catalog.services[0]
    tenant = next(iter(sorted(first.tenant_upstreams)), "demo")
    tok = mint(secret.encode(), sub="demo-user", roles=sorted(catalog.roles) or [], tenant=tenant)
    return f"{first.route_prefix.rstrip('/')}/hello", tok


def _banner(
    conf: UpSettings, catalog: Catalog, secret: str | None, out: Callable[[str], None]
) -> None:
    base = f"{'https' if conf.https else 'http'}://127.0.0.1:{conf.listener_port}"
    out("")
    out(f"Envoy:        {base}")
    out(f"Envoy admin:  http://127.0.0.1:{conf.admin_port}")
    out(f"xDS status:   http://127.0.0.1:{conf.xds_http_port}/status")
    out(
        f"ext_authz:    gRPC 127.0.0.1:{conf.authz_port}, HTTP checks "
        f"127.0.0.1:{conf.authz_http_check_port} (Envoy uses {conf.authz_transport}; "
        f"metrics :{conf.authz_http_port})"
    )
    out(f"catalog:      {conf.catalog} (edits apply live)")
    if secret is not None and catalog.services:
        path, tok = _demo_token(secret, catalog)
        out("")
        out("dev signing key (HS256), for `sidecar token`:")
        out(f"  export SIDECAR_JWT_SECRET={secret}")
        out("")
        out("Try (200, with identity headers the upstream received):")
        out(f"  curl -i -H 'Authorization: Bearer {tok}' {base}{path}")
        out("and without a token (401):")
        out(f"  curl -i {base}{path}")
    out("")
    out("Ctrl-C stops everything.")


class Stopping:
    """Signals to `sidecar up`: the first asks for a graceful stop, a second for a quick one
    (the drain is cut short)."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.hurry = threading.Event()

    def signalled(self, *_: object) -> None:
        if self.asked.is_set():
            self.hurry.set()
        self.asked.set()


def shut_down(
    sup: Supervisor, conf: UpSettings, stopping: Stopping, out: Callable[[str], None]
) -> None:
    """Stop in the order that cuts no request: Envoy stops taking connections and finishes
    the requests in flight (up to `conf.drain_timeout_s`) while ext_authz still answers its
    checks; then every child, one at a time, newest first (Envoy, the xDS server, ext_authz,
    the demo upstreams)."""
    envoy = next((c for c in sup.children if c.name == "envoy"), None)
    if stopping.asked.is_set() and envoy is not None and envoy.process.poll() is None:
        admin = f"127.0.0.1:{conf.admin_port}"
        try:
            drain.start(admin)
            out(
                f"sidecar up: draining Envoy: new connections refused, requests in flight "
                f"answered (up to {conf.drain_timeout_s:g} s; Ctrl-C again to cut it short)"
            )
            sys.stdout.flush()
            why = drain.wait(
                admin,
                conf.drain_timeout_s,
                defaults.DRAIN_QUIET_S,
                stop_early=stopping.hurry.is_set,
            )
        except OSError as err:
            why = f"Envoy's admin did not take it ({err})"
        out(f"sidecar up: drain over: {why}")
        sys.stdout.flush()
    sup.stop_all(defaults.SERVER_STOP_GRACE_S)


def _policy_key_file(workdir: Path) -> Path:
    """A new route-policy MAC key for this run, readable by its owner only: the xDS server
    signs with it and ext_authz believes only what it signed."""
    path = workdir / "policy.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return path


def run(conf: UpSettings, catalog: Catalog, out: Callable[[str], None] = print) -> int:
    sup = Supervisor(defaults.RESTART_BACKOFF_BASE_S, defaults.RESTART_BACKOFF_MAX_S)
    stopping = Stopping()
    stop = stopping.asked
    signal.signal(signal.SIGTERM, stopping.signalled)
    signal.signal(signal.SIGINT, stopping.signalled)
    env = {**os.environ, **conf.child_env}
    if not env.get("SIDECAR_HEALTH_EVENT_LOG"):  # Envoy's health history, kept after the run
        env["SIDECAR_HEALTH_EVENT_LOG"] = str(history.make_runtime_dir(env) / history.LOG_NAME)
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-up-"))
    if "SIDECAR_POLICY_KEY_FILE" not in env:
        env["SIDECAR_POLICY_KEY_FILE"] = str(_policy_key_file(workdir))
    secret: str | None = None
    if conf.demo and not conf.key_configured:
        secret = secrets.token_urlsafe(32)
        env["SIDECAR_JWT_SECRET"] = secret
    deadline = time.monotonic() + conf.startup_timeout_s
    envoy_log = EnvoyLogFilter(sys.stderr.buffer)
    try:
        if conf.demo:
            specs = demo_upstreams(catalog)
            if specs:
                sup.start("demo upstreams", commands.demo_upstreams(specs), env=env)
                out(f"demo upstreams: {', '.join(specs)}")
        # Envoy is beside us: the servers listen on loopback only.
        sup.start("ext-authz", commands.ext_authz("--authz-host", "127.0.0.1"), env=env)
        sup.start("xds-server", commands.xds_server("--xds-host", "127.0.0.1"), env=env)
        _wait_for(
            "the xDS server",
            lambda: _http_ok(f"http://127.0.0.1:{conf.xds_http_port}/ready"),
            sup,
            deadline,
        )
        _wait_for(
            "ext_authz",
            lambda: _http_ok(f"http://127.0.0.1:{conf.authz_http_port}/ready"),
            sup,
            deadline,
        )
        bootstrap = workdir / "envoy.json"
        bootstrap.write_text(
            render_json(
                BootstrapOptions(
                    node_id=conf.node_id,
                    node_cluster=conf.node_cluster,
                    delta=conf.xds_protocol == "delta",
                    xds_port=conf.xds_port,
                    authz_port=conf.authz_port,
                    authz_http_check_port=conf.authz_http_check_port,
                    authz_transport=conf.authz_transport,
                    admin_port=conf.admin_port,
                    max_downstream_connections=conf.max_downstream_connections,
                    max_heap_bytes=conf.envoy_max_heap_bytes,
                    tls=conf.envoy_tls,
                    outlier_event_log=history.outlier_log(env),
                )
            )
        )
        sup.start(
            "envoy",
            [
                *commands.envoy(find_envoy(env), bootstrap, conf.envoy_log_level),
                *drain.ENVOY_DRAIN_ARGS,
            ],
            env=env,
            stderr=envoy_log.fd,  # without Envoy's cache_v2 warnings (sidecar.envoy_log)
        )
        _wait_for(
            "Envoy to ACK every resource and bind its listener",
            lambda: _envoy_ready(conf),
            sup,
            deadline,
        )
        _banner(conf, catalog, secret, out)
        sys.stdout.flush()
        # From here on a child that dies is restarted; Envoy keeps serving its last config
        # while the xDS server or ext_authz is away. Only a signal to us stops everything.
        while not stop.is_set():
            for event in sup.keep_alive():
                out(f"sidecar up: {event.child} {event.message}")
                sys.stdout.flush()
            stop.wait(0.1)
        return 0
    except (RuntimeError, FileNotFoundError) as err:
        print(f"sidecar up: {err}", file=sys.stderr)
        return 1
    finally:
        shut_down(sup, conf, stopping, out)
        envoy_log.close()
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
