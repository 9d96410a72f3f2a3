"""`sidecar`: up, validate, explain, render, diff, bootstrap, schema, token, probe, drain,
status, policy."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz import idp
from ext_authz import settings as authz_settings
from ext_authz.keys import KeyConfigError, KeySource
from ext_authz.tokens import mint
from sidecar import (
    drain,
    endpoints,
    envdiff,
    explain,
    history,
    policy_cmd,
    sample,
    status_view,
    up,
)
from sidecar.bootstrap import BootstrapOptions, add_client_tls_arguments, client_tls, render_json
from sidecar_shared import defaults, flags
from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag, add_repeated, add_switch
from xds_server import engines, environments, status, tls_settings, typeurls
from xds_server import settings as xds_settings
from xds_server.builder import SnapshotBuilder
from xds_server.catalog import (
    Catalog,
    CatalogError,
    decode_catalog,
    endpoints_in_order,
    json_schema,
)
from xds_server.snapshot import Snapshot


def _report(path: Path | str, err: CatalogError) -> None:
    print(f"{path}: invalid ({len(err.problems)} problem(s))", file=sys.stderr)
    for p in err.problems:
        print(f"  {p}", file=sys.stderr)


def _load_or_report(path: Path, env: str | None = None) -> Catalog | None:
    """The catalog at `path`, with `env`'s overlay merged onto it and substituted, as the xDS
    server loads it; None after reporting every problem."""
    files = environments.CatalogFiles(path, environments.check_env_name(env) if env else None)
    try:
        loaded = environments.load(files, os.environ)
    except CatalogError as err:
        _report(files.name, err)
        return None
    try:
        return decode_catalog(loaded.raw, loaded.source)
    except CatalogError as err:
        _report(files.name, loaded.explain(err))
        return None


def _catalog_path(args: argparse.Namespace) -> Path:
    """The positional PATH when given, else --catalog (SIDECAR_CATALOG)."""
    return Path(args.path or args.catalog)


def _build_or_report(
    path: Path, args: argparse.Namespace, env: str | None = None
) -> tuple[Snapshot, int, bytes] | None:
    """The snapshot the xDS server would serve for the catalog at `path` with `--env` (or
    `env`) merged onto it (the same loading and build step), with the catalog's JSON as
    validated; or None after reporting every problem."""
    settings = xds_settings.from_args(argparse.Namespace(**{**vars(args), "env": None}))
    chosen = args.env if env is None else env
    files = environments.CatalogFiles(path, environments.check_env_name(chosen) if chosen else None)
    try:
        loaded = environments.load(files, os.environ)
    except CatalogError as err:
        _report(files.name, err)
        return None
    try:
        snapshot, services = SnapshotBuilder(settings.translate)(loaded.raw, loaded.source)
    except CatalogError as err:
        _report(files.name, loaded.explain(err))
        return None
    return snapshot, services, loaded.raw


def cmd_validate(args: argparse.Namespace) -> int:
    path = _catalog_path(args)
    if args.all_envs:
        return _validate_all(path, args)
    built = _build_or_report(path, args)
    if built is None:
        return 1
    snapshot, services, raw = built
    name = environments.CatalogFiles(path, args.env or None).name
    print(f"{name}: valid, {services} service(s), version {snapshot.version}")
    tested = explain.tests_line(raw, str(path))
    if tested:
        print(tested)
    for line in endpoint_lines(path, raw):
        print(line)
    for name, choice in _engine_choices(path, args, raw):
        print(f"  engine {name}: {choice.engine} ({choice.reason})")
    return 0


def _engine_choices(
    path: Path, args: argparse.Namespace, raw: bytes
) -> list[tuple[str, engines.Choice]]:
    """Which engine decides each service's and endpoint's routes, and why (`--decision`), for
    the catalog JSON `raw` (as merged) of `path`."""
    settings = xds_settings.from_args(argparse.Namespace(**{**vars(args), "env": None}))
    return engines.route_choices(decode_catalog(raw, str(path)), settings.translate.authz.engines)


def _validate_all(path: Path, args: argparse.Namespace) -> int:
    """The base alone, then each overlay beside it merged onto it (for CI)."""
    failed = []
    for env in ["", *environments.env_names(path)]:
        built = _build_or_report(path, args, env)
        label = f"env {env}" if env else "base"
        if built is None:
            failed.append(env or "(base)")
        else:
            snapshot, services, _ = built
            name = environments.CatalogFiles(path, env or None).name
            print(f"{name}: valid ({label}), {services} service(s), version {snapshot.version}")
    if failed:
        print(f"sidecar validate: invalid: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    envs = args.env or []
    if len(envs) != 2:
        print("sidecar diff: give --env twice (--env '' for the base alone)", file=sys.stderr)
        return 2
    path = _catalog_path(args)
    built = [_build_or_report(path, args, env) for env in envs]
    if built[0] is None or built[1] is None:
        return 1
    names = [environments.CatalogFiles(path, env or None).name for env in envs]
    changes = envdiff.diff(built[0][0], built[1][0])
    if args.json:
        print(json.dumps(envdiff.as_json(changes, *names), indent=2, ensure_ascii=True))
    else:
        for line in envdiff.text_lines(changes, *names):
            print(line)
    return 0


def endpoint_lines(path: Path, raw: bytes | None = None) -> list[str]:
    """One line per endpoint of the (valid) catalog at `path` (or of its JSON `raw`, as
    merged), each service's in the order its routes match (most specific first): its limit
    name, methods, path, kind and what it overrides."""
    raw = path.read_bytes() if raw is None else raw
    if b'"endpoints"' not in raw:
        return []
    catalog = decode_catalog(raw, str(path))
    lines = []
    for svc in catalog.services:
        for ep in endpoints_in_order(svc.endpoints):
            methods = ",".join(ep.methods) if ep.methods else "*"
            shown = ep.model_dump(exclude_unset=True, exclude={"name", "path", "match", "methods"})
            overrides = "; ".join(f"{k} {json.dumps(v)}" for k, v in shown.items())
            lines.append(
                f"  endpoint {svc.service_name}.{ep.name}: {methods} {ep.path} ({ep.match})"
                + (f": {overrides}" if overrides else "")
            )
    return lines


def cmd_render(args: argparse.Namespace) -> int:
    built = _build_or_report(_catalog_path(args), args)
    if built is None:
        return 1
    snapshot = built[0]
    # One resource per line: easy to grep and diff, and the json module's C encoder (an
    # indented document takes its pure-Python one, seconds for 10,000 services).
    versions = {typeurls.SHORT_NAMES[t]: v for t, v in snapshot.versions.items()}
    lines = [
        "{",
        f'"version": {json.dumps(snapshot.version)},',
        f'"versions": {json.dumps(versions)},',
        '"engines": {'
        + ", ".join(
            f"{json.dumps(name)}: {json.dumps({'engine': c.engine, 'reason': c.reason})}"
            for name, c in _engine_choices(_catalog_path(args), args, built[2])
        )
        + "},",
        '"resources": {',
    ]
    for i, type_url in enumerate(typeurls.PUSH_ORDER):
        rendered = [
            json.dumps(json_format.MessageToDict(r.message, preserving_proto_field_name=True))
            for r in snapshot.resources[type_url].values()
        ]
        last = i == len(typeurls.PUSH_ORDER) - 1
        lines.append(f'"{typeurls.SHORT_NAMES[type_url]}": [')
        lines.append(",\n".join(rendered))
        lines.append("]" + ("" if last else ","))
    lines.append("}}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """An Envoy bootstrap for a deployment where Envoy reaches our servers by these names."""
    options = BootstrapOptions(
        node_id=args.node_id,
        node_cluster=args.node_cluster,
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        authz_host=args.authz_host,
        authz_port=args.authz_port,
        authz_http_check_port=args.authz_http_check_port,
        authz_transport=xds_settings.authz_transport(args),
        delta=args.xds_protocol == "delta",
        tls=client_tls(args),
        stats_port=args.stats_port,
    )
    sys.stdout.write(render_json(options))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.history:
        return _status_history(args)
    url = f"http://{args.xds_http}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            raw = json.load(resp)
    except OSError as err:
        print(f"sidecar status: cannot reach {url}: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"sidecar status: {url} did not answer JSON: {err}", file=sys.stderr)
        return 1
    try:
        document = status.from_json(raw)
    except status.StatusFormatError as err:
        print(
            f"sidecar status: cannot read the status document from {url} "
            f"(a server of another version?): {err}",
            file=sys.stderr,
        )
        return 1
    health, health_error = _endpoint_health(args.envoy_admin)
    if args.json:
        # The document as the server wrote it (keys this version does not know included).
        # ensure_ascii: every control character a peer sent is escaped by the JSON itself.
        if args.envoy_admin:
            raw["endpoints"] = [dataclasses.asdict(e) for e in health]
            if health_error:
                raw["endpoints_error"] = health_error
        print(json.dumps(raw, indent=2, ensure_ascii=True))
    else:
        for line in status_view.sync_lines(document):
            print(line)
        if health_error:
            print(f"sidecar status: endpoint health unknown: {health_error}", file=sys.stderr)
        elif args.envoy_admin:
            for line in status_view.health_lines(args.envoy_admin, health):
                print(line)
    return status_view.exit_code(document, health, health_error is not None)


def _status_history(args: argparse.Namespace) -> int:
    if args.history_limit < 1:
        raise SettingsError("--history-limit must be at least 1")
    path = Path(args.health_event_log) if args.health_event_log else history.default_log()
    try:
        if args.json:
            document = history.as_json(path, args.service, args.history_limit)
            print(json.dumps(document, indent=2, ensure_ascii=True))
            return 0
        for line in history.lines(path, args.service, args.history_limit):
            print(line)
    except OSError as err:
        print(f"sidecar status: cannot read the health event log: {err}", file=sys.stderr)
        return 1
    return 0


def _endpoint_health(admin: str) -> tuple[list[endpoints.EndpointHealth], str | None]:
    """Per endpoint health from Envoy's admin at `admin` (nothing when it is empty), or why it
    could not be read."""
    if not admin:
        return [], None
    try:
        return endpoints.read(endpoints.fetch(admin)), None
    except (OSError, ValueError) as err:
        return [], f"cannot read http://{admin}/clusters: {err}"


def cmd_probe(args: argparse.Namespace) -> int:
    """A health check for container probes: gRPC health at HOST:PORT (exit 0 when SERVING), or
    an HTTP GET of an http:// URL (exit 0 on 200). With --alive, any answer exits 0: the
    process runs and answers (a liveness probe), ready or not."""
    if args.address.startswith("http://"):
        return _probe_http(args.address, args.timeout, args.alive)
    request = health_pb2.HealthCheckRequest(service=args.service)
    try:
        with grpc.insecure_channel(args.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            resp = stub.Check(request, timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"{args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{args.address}: {state}")
    return 0 if args.alive or resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def _probe_http(url: str, timeout: float, alive: bool) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http:// only)
            status = int(resp.status)
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError as err:
        print(f"{url}: {err}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0 if alive or status == 200 else 1


def parse_ttl(text: str) -> int:
    """'90', '90s', '15m', '1h', '2d' → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    seconds = int(number) * units[unit]
    if seconds <= 0:
        raise ValueError("the TTL must be positive")
    return seconds


def cmd_token(args: argparse.Namespace) -> int:
    # The same variables, read the same way, as ext_authz; the JWKS holds no signing key.
    keys = dataclasses.replace(
        authz_settings.key_settings(args), jwks=None, jwks_ca_file=None, discover_from=None
    )
    try:
        claims = authz_settings.claim_names(args)
        if args.role and not claims.roles:
            raise ValueError(f"{args.idp} tokens carry no roles: set SIDECAR_CLAIM_ROLES")
        secret = KeySource(keys).load().secret if keys.secret or keys.secret_file else None
    except (KeyConfigError, ValueError) as err:
        print(f"sidecar token: {err}", file=sys.stderr)
        return 1
    if secret is None:
        print(
            "sidecar token: no dev key: set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE "
            "(`sidecar up --demo` prints one)",
            file=sys.stderr,
        )
        return 1
    print(
        mint(
            secret,
            sub=args.sub,
            roles=args.role or [],
            tenant=args.tenant,
            ttl_s=args.ttl,
            issuer=args.jwt_issuer,
            audience=args.jwt_audience,
            claims=claims,
            extra=idp.preset(args.idp).usual_claims,
        )
    )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    packaged = sample.demo_catalog(args.catalog, args.demo)
    if packaged is not None:
        print(
            f"no {args.catalog} here: using the packaged sample catalog {packaged} "
            f"(to edit it, copy it here as {args.catalog} and run this again)"
        )
        args.catalog = str(packaged)
    catalog = _load_or_report(Path(args.catalog), args.env)
    if catalog is None:
        return 1
    # Each child reads the flags given to us as its own SIDECAR_* variables.
    child_env = {
        **flags.to_environ(args, xds_settings.build_parser({})),
        **flags.to_environ(args, authz_settings.build_parser({})),
    }
    conf = up.UpSettings(
        catalog=Path(args.catalog),
        demo=args.demo,
        listener_port=args.listener_port,
        admin_port=args.admin_port,
        xds_port=args.xds_port,
        xds_http_port=args.xds_http_port,
        authz_port=args.authz_port,
        authz_http_check_port=args.authz_http_check_port,
        authz_transport=xds_settings.authz_transport(args),
        authz_http_port=args.authz_http_port,
        node_id=args.node_id,
        xds_protocol=args.xds_protocol,
        node_cluster=args.node_cluster,
        envoy_log_level=args.envoy_log_level,
        startup_timeout_s=args.startup_timeout,
        key_configured=bool(
            args.jwt_secret
            or args.jwt_secret_file
            or args.jwks
            or authz_settings.key_settings(args).discover_from
        ),
        child_env=child_env,
        max_downstream_connections=args.max_downstream_connections,
        envoy_max_heap_bytes=args.envoy_max_heap_bytes,
        drain_timeout_s=args.drain_timeout,
        envoy_tls=client_tls(args),
        # The files are checked here too: a bad one stops `up` at once, naming it.
        https=tls_settings.listener_tls(args) is not None,
    )
    return up.run(conf, catalog)


def _add_envoy_node_flags(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """What Envoy is told about itself and its xDS stream, in `up` and in `bootstrap` alike."""
    add_flag(
        p,
        "admin-port",
        type=int,
        default=defaults.ENVOY_ADMIN_PORT,
        help="Envoy admin port",
        environ=environ,
    )
    add_flag(p, "node-id", default=defaults.NODE_ID, help="Envoy node id", environ=environ)
    add_flag(
        p,
        "xds-protocol",
        type=flags.one_of(*defaults.XDS_PROTOCOLS),
        default=defaults.XDS_PROTOCOL,
        help="what Envoy speaks to the xDS server: sotw (State of the World) or delta",
        environ=environ,
    )
    add_flag(
        p, "node-cluster", default=defaults.NODE_CLUSTER, help="Envoy node cluster", environ=environ
    )


def _add_drain_timeout(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_flag(
        p,
        "drain-timeout",
        type=float,
        default=defaults.DRAIN_TIMEOUT_S,
        help="at a stop, seconds Envoy may take to finish the requests in flight",
        environ=environ,
    )


def cmd_drain(args: argparse.Namespace) -> int:
    """Drain an Envoy (a Kubernetes preStop): exit 0 once it serves nothing, 1 if its admin
    does not answer."""
    try:
        drain.start(args.envoy_admin)
    except OSError as err:
        print(f"sidecar drain: Envoy's admin at {args.envoy_admin} did not answer: {err}")
        return 1
    print(
        f"sidecar drain: {drain.wait(args.envoy_admin, args.drain_timeout, defaults.DRAIN_QUIET_S)}"
    )
    return 0


def _add_bootstrap_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "bootstrap", help="print an Envoy bootstrap for containers (envoy/*.json are made so)"
    )

    def flag(name: str, default: object, help: str, type: Any = str) -> None:
        add_flag(p, name, default=default, help=help, type=type, environ=environ)

    flag("xds-host", "127.0.0.1", "where Envoy reaches the xDS server")
    flag("xds-port", defaults.XDS_PORT, "xDS gRPC port", int)
    flag("authz-host", "127.0.0.1", "where Envoy reaches ext_authz")
    flag("authz-port", defaults.AUTHZ_PORT, "ext_authz gRPC port", int)
    flag("authz-http-check-port", defaults.AUTHZ_HTTP_CHECK_PORT, "ext_authz HTTP check port", int)
    xds_settings.add_transport_argument(p, environ)
    flag("admin-address", defaults.ENVOY_ADMIN_ADDRESS, "Envoy admin address")
    flag(
        "stats-port",
        None,
        "a listener on every address serving only GET /stats/prometheus (for Prometheus)",
        int,
    )
    _add_envoy_node_flags(p, environ)
    add_client_tls_arguments(p, environ)
    p.set_defaults(func=cmd_bootstrap)


def _add_history_flags(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_switch(
        p,
        "history",
        help="each endpoint's last health transitions, from Envoy's health event log",
        environ=environ,
    )
    p.add_argument("service", nargs="?", help="with --history: only this service")
    add_flag(
        p,
        "health-event-log",
        default="",
        help=f"the log --history reads (default: {history.default_log()}, sidecar up's)",
        environ=environ,
    )
    add_flag(
        p,
        "history-limit",
        type=int,
        default=history.PER_ENDPOINT,
        help="transitions shown per endpoint",
        environ=environ,
    )


def _add_diff_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "diff",
        help="what differs between two environments' Envoy resources, service by service",
        conflict_handler="resolve",  # --env given twice here
    )
    p.add_argument("path", nargs="?", help="the base catalog (default: --catalog)")
    xds_settings.add_arguments(p, environ)
    add_repeated(
        p, "env", help="an environment, twice (A then B; '' is the base alone)", environ=environ
    )
    add_switch(p, "json", help="print the changes as JSON", environ=environ)
    p.set_defaults(func=cmd_diff)


def _add_up_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "up",
        help="run xDS server, ext_authz, Envoy (and demo upstreams) in the foreground",
        conflict_handler="resolve",  # both servers have --log-level
    )
    xds_settings.add_arguments(p, environ)
    authz_settings.add_arguments(p, environ)
    add_switch(
        p, "demo", help="also run echo upstreams for the catalog's loopback URLs", environ=environ
    )
    _add_envoy_node_flags(p, environ)
    add_flag(
        p,
        "envoy-log-level",
        default=defaults.ENVOY_LOG_LEVEL,
        help="Envoy log level",
        environ=environ,
    )
    add_flag(
        p,
        "max-downstream-connections",
        type=int,
        default=defaults.MAX_DOWNSTREAM_CONNECTIONS,
        help="Envoy's cap on client connections (overload manager)",
        environ=environ,
    )
    add_flag(
        p,
        "envoy-max-heap-bytes",
        type=int,
        default=defaults.ENVOY_MAX_HEAP_BYTES,
        help="Envoy's heap budget: shrink at 95 %%, refuse new requests at 98 %%",
        environ=environ,
    )
    add_flag(
        p,
        "startup-timeout",
        type=float,
        default=defaults.STARTUP_TIMEOUT_S,
        help="seconds to wait for readiness",
        environ=environ,
    )
    _add_drain_timeout(p, environ)
    add_client_tls_arguments(p, environ)
    p.set_defaults(func=cmd_up)


def _add_token_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "token",
        help="mint an HS256 token with the configured dev key (--idp: in that provider's shape)",
    )
    add_flag(p, "sub", default=None, required=True, help="user id", environ=environ)
    flags.add_repeated(p, "role", help="a role", environ=environ)
    add_flag(p, "tenant", default=None, help="tenant id", environ=environ)
    add_flag(
        p, "ttl", type=parse_ttl, default=3600, help="lifetime: 90s, 15m, 1h, 2d", environ=environ
    )
    authz_settings.add_key_arguments(p, environ)
    p.set_defaults(func=cmd_token)


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    _add_up_parser(sub, environ)

    # validate and render translate as the xDS server would, with its settings.
    p = sub.add_parser("validate", help="check a catalog; exit 1 with every error")
    p.add_argument("path", nargs="?", help="the catalog (default: --catalog)")
    xds_settings.add_arguments(p, environ)
    add_switch(
        p,
        "all-envs",
        help="validate the base alone, then every overlay beside it merged onto it (for CI)",
        environ=environ,
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("explain", help="the decision ext_authz would make, step by step")
    explain.add_arguments(p, environ)
    p.set_defaults(func=explain.run)

    p = sub.add_parser("render", help="print the Envoy resources a catalog becomes, as JSON")
    p.add_argument("path", nargs="?", help="the catalog (default: --catalog)")
    xds_settings.add_arguments(p, environ)
    p.set_defaults(func=cmd_render)
    _add_diff_parser(sub, environ)

    _add_bootstrap_parser(sub, environ)

    p = sub.add_parser("schema", help="print the catalog's JSON Schema")
    p.set_defaults(func=cmd_schema)

    _add_token_parser(sub, environ)

    p = sub.add_parser(
        "probe", help="gRPC health check (exit 0 when SERVING) or HTTP GET (exit 0 on 200)"
    )
    p.add_argument("address", help="HOST:PORT (gRPC health) or http://HOST:PORT/PATH")
    add_flag(
        p, "service", default="", help="service name ('' is the whole server)", environ=environ
    )
    add_flag(p, "timeout", type=float, default=2.0, help="seconds", environ=environ)
    add_switch(
        p,
        "alive",
        help="exit 0 on any answer: the process runs (liveness), ready or not",
        environ=environ,
    )
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "drain",
        help="make an Envoy refuse new connections and finish those in flight (a preStop hook)",
    )
    add_flag(
        p,
        "envoy-admin",
        default=defaults.ENVOY_ADMIN,
        help="Envoy admin host:port",
        environ=environ,
    )
    _add_drain_timeout(p, environ)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser(
        "status", help="every connected Envoy, what it has ACKed, and one Envoy's endpoint health"
    )
    add_flag(
        p,
        "xds-http",
        default=f"127.0.0.1:{defaults.XDS_HTTP_PORT}",
        help="xDS status address",
        environ=environ,
    )
    add_flag(
        p,
        "envoy-admin",
        default=defaults.ENVOY_ADMIN,
        help="Envoy admin host:port to read endpoint health from ('' to skip)",
        environ=environ,
    )
    add_switch(p, "json", help="print the raw status document", environ=environ)
    _add_history_flags(p, environ)
    p.set_defaults(func=cmd_status)

    policy_cmd.add_parser(sub, environ)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`sidecar status | head`): end quietly, as a shell tool does.
        # Python flushes stdout again at exit; point it at /dev/null so that flush says nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except SettingsError as err:
        print(f"sidecar: {err}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
