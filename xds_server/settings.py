"""The xDS server's settings: built once from flags and `SIDECAR_*` variables, passed down.
A value that cannot work raises `SettingsError`, naming the setting."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar_shared import defaults, tls, tracing
from sidecar_shared.contract import AUTHZ_TRANSPORTS, read_policy_keys
from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag, boolean
from sidecar_shared.tls import ServerTls
from xds_server import engines, environments, tls_settings
from xds_server.resources.common import (
    AuthzOptions,
    EdgeOptions,
    ObservabilityOptions,
    Options,
    TracingOptions,
)
from xds_server.state_dir import default_path


@dataclass(frozen=True)
class XdsSettings:
    catalog: Path
    host: str
    port: int
    http_host: str
    http_port: int
    debounce_ms: int
    log_level: str
    translate: Options
    rollback_on_nack: bool = defaults.ROLLBACK_ON_NACK
    tls: ServerTls | None = None  # the xDS gRPC port's TLS (None: plain text)
    # What peers may make the server hold, and who may veto a version (docs/xds.md).
    unauthenticated_veto: bool = False
    max_streams: int = 1000
    max_streams_per_connection: int = 8
    max_request_bytes: int = 4 * 1024 * 1024
    spare_names: int = 1000
    # The environment whose overlay is merged onto the catalog (docs/environments.md).
    env: str | None = None
    # Where Envoy's verdicts outlive the process (`state_dir`); None: nowhere.
    state_dir: Path | None = None


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    def flag(name: str, default: object, help: str, type: Callable[[str], Any] = str) -> None:
        add_flag(parser, name, default=default, help=help, type=type, environ=environ)

    flag("catalog", defaults.CATALOG, "catalog file")
    flag(
        "env",
        None,
        "environment: merge the overlay CATALOG-STEM.ENV.json beside the catalog onto it",
    )
    flag("xds-host", defaults.XDS_HOST, "xDS gRPC address")
    flag("xds-port", defaults.XDS_PORT, "xDS gRPC port", int)
    flag("xds-http-host", defaults.XDS_HTTP_HOST, "metrics/status address")
    flag("xds-http-port", defaults.XDS_HTTP_PORT, "metrics/status port", int)
    tls.add_arguments(parser, environ, "xds", "the xDS gRPC port")
    flag("listener-address", defaults.LISTENER_ADDRESS, "address Envoy's listener binds")
    flag("listener-port", defaults.LISTENER_PORT, "Envoy's listener port", int)
    tls_settings.add_arguments(parser, environ)
    flag(
        "reload-debounce-ms",
        defaults.RELOAD_DEBOUNCE_MS,
        "wait this long for a save to settle before reloading",
        int,
    )
    flag("authz-timeout-ms", defaults.AUTHZ_TIMEOUT_MS, "how long Envoy waits for ext_authz", int)
    flag(
        "authz-failure-status",
        defaults.AUTHZ_FAILURE_STATUS,
        "HTTP status Envoy answers when ext_authz cannot be reached",
        int,
    )
    add_transport_argument(parser, environ)
    flag(
        "policy-key-file",
        None,
        "file of route-policy MAC keys shared with ext_authz, one a line: the first signs "
        "(without one, ext_authz refuses every route's policy)",
    )
    add_edge_arguments(parser, environ)
    flag("access-log", defaults.ACCESS_LOG, "Envoy's JSON access log: '-' stdout, 'off', or a path")
    flag(
        "health-event-log",
        "",
        "absolute path of Envoy's health-check event log, read by sidecar status --history "
        "('' or 'off': none; sidecar up chooses one in its runtime directory)",
    )
    flag(
        "envoy-trace-sampling",
        defaults.ENVOY_TRACE_SAMPLING_PERCENT,
        "percent of requests Envoy starts a trace for (with OTEL_EXPORTER_OTLP_ENDPOINT set)",
        float,
    )
    flag(
        "region",
        defaults.REGION,
        "the Envoys' region, then the failover order (eu-west,eu-central): endpoints there are "
        "preferred, in this order, over any other region's",
    )
    flag(
        "rollback-on-nack",
        defaults.ROLLBACK_ON_NACK,
        "when Envoy rejects a version, move every proxy back to the last one all of them "
        "accepted (true/false)",
        boolean,
    )
    flag(
        "state-dir",
        None,
        "where the versions proxies accepted and rejected are kept across restarts, shared by "
        "the replicas given the same one; '' keeps nothing (default: "
        "$XDG_STATE_HOME/sidecar/xds-<hash of the catalog path>)",
    )
    flag("log-level", "info", "log level")
    add_limit_arguments(parser, environ)
    engines.add_arguments(parser, environ)


def add_limit_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Who may veto a version, and what a peer may make the server hold (docs/xds.md)."""

    def flag(name: str, default: object, help: str, type: Callable[[str], Any] = int) -> None:
        add_flag(parser, name, default=default, help=help, type=type, environ=environ)

    d = XdsSettings
    flag(
        "xds-unauthenticated-veto",
        d.unauthenticated_veto,
        "let a proxy not authenticated by a client certificate veto a version (roll the fleet "
        "back) when it meets the other conditions; only where no one else reaches the xDS port",
        boolean,
    )
    flag("xds-max-streams", d.max_streams, "ADS streams held at once; more are refused")
    flag(
        "xds-max-streams-per-connection",
        d.max_streams_per_connection,
        "ADS streams one client connection may hold; more are refused",
    )
    flag("xds-max-request-bytes", d.max_request_bytes, "largest request message accepted")
    flag(
        "xds-spare-names",
        d.spare_names,
        "names a subscription may hold beyond twice its type's resources",
    )


def limits_of(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("xds_max_streams", "xds_max_streams_per_connection", "xds_max_request_bytes"):
        if getattr(args, name) < 1:
            raise SettingsError(f"--{name.replace('_', '-')} must be at least 1")
    if args.xds_spare_names < 0:
        raise SettingsError("--xds-spare-names must not be negative")
    return {
        "unauthenticated_veto": args.xds_unauthenticated_veto,
        "max_streams": args.xds_max_streams,
        "max_streams_per_connection": args.xds_max_streams_per_connection,
        "max_request_bytes": args.xds_max_request_bytes,
        "spare_names": args.xds_spare_names,
    }


def add_transport_argument(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """`--authz-transport`: which of ext_authz's servers Envoy calls. The xDS server configures
    the ext_authz filter for it; the bootstrap points the ext_authz cluster at it."""
    add_flag(
        parser,
        "authz-transport",
        default=defaults.AUTHZ_TRANSPORT,
        help="how Envoy calls ext_authz: http (its HTTP check port) or grpc (its gRPC port)",
        environ=environ,
    )


def authz_transport(args: argparse.Namespace) -> str:
    if args.authz_transport not in AUTHZ_TRANSPORTS:
        raise SettingsError(
            f"--authz-transport must be {' or '.join(AUTHZ_TRANSPORTS)}, "
            f"not {args.authz_transport!r}"
        )
    return str(args.authz_transport)


def add_edge_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Envoy's edge-proxy limits on the listener (docs/security.md)."""

    def flag(name: str, default: object, help: str, type: type = int) -> None:
        add_flag(parser, name, default=default, help=help, type=type, environ=environ)

    d = defaults
    flag("request-headers-timeout-ms", d.EDGE_REQUEST_HEADERS_TIMEOUT_MS, "whole header block")
    flag("stream-idle-timeout-ms", d.EDGE_STREAM_IDLE_TIMEOUT_MS, "a stream moving no byte")
    flag("request-timeout-ms", d.EDGE_REQUEST_TIMEOUT_MS, "a whole request, body included")
    flag("idle-timeout-ms", d.EDGE_IDLE_TIMEOUT_MS, "a client connection with no request")
    flag("h2-max-concurrent-streams", d.EDGE_H2_MAX_CONCURRENT_STREAMS, "per HTTP/2 connection")
    flag("h2-stream-window-bytes", d.EDGE_H2_STREAM_WINDOW_BYTES, "HTTP/2 initial stream window")
    flag("h2-connection-window-bytes", d.EDGE_H2_CONNECTION_WINDOW_BYTES, "HTTP/2 conn window")
    flag("connection-buffer-bytes", d.EDGE_CONNECTION_BUFFER_BYTES, "buffer per connection")
    flag("max-request-headers", d.EDGE_MAX_REQUEST_HEADERS, "headers per request (431 above)")
    flag(
        "underscore-headers",
        d.EDGE_UNDERSCORE_HEADERS,
        "header names with '_': reject (400) or drop",
        str,
    )


def edge_options(args: argparse.Namespace) -> EdgeOptions:
    if args.underscore_headers not in ("reject", "drop"):
        raise SettingsError(
            f"--underscore-headers must be reject or drop, not {args.underscore_headers!r}"
        )
    return EdgeOptions(
        request_headers_timeout_ms=args.request_headers_timeout_ms,
        stream_idle_timeout_ms=args.stream_idle_timeout_ms,
        request_timeout_ms=args.request_timeout_ms,
        idle_timeout_ms=args.idle_timeout_ms,
        h2_max_concurrent_streams=args.h2_max_concurrent_streams,
        h2_stream_window_bytes=args.h2_stream_window_bytes,
        h2_connection_window_bytes=args.h2_connection_window_bytes,
        connection_buffer_bytes=args.connection_buffer_bytes,
        max_request_headers=args.max_request_headers,
        underscore_headers=args.underscore_headers,
    )


# ext_authz answers these itself; Envoy's reply when it cannot reach ext_authz must differ, so
# that each gets its own JSON body (`listener.local_reply_config`).
_AUTHZ_OWN_STATUSES = (401, 403, 429, 500)


def tracing_options(args: argparse.Namespace, environ: Mapping[str, str]) -> TracingOptions | None:
    """Envoy traces to the collector our own servers export to (the standard OTEL variables),
    when one is set."""
    if not tracing.enabled(environ):
        return None
    target = tracing.collector(environ)
    if not 0 <= args.envoy_trace_sampling <= 100:
        raise SettingsError("--envoy-trace-sampling must be a percentage (0 to 100)")
    return TracingOptions(
        target.host,
        target.port,
        args.envoy_trace_sampling,
        protocol=target.protocol,
        path=target.path,
    )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> XdsSettings:
    if (
        args.authz_failure_status in _AUTHZ_OWN_STATUSES
        or not 200 <= args.authz_failure_status < 600
    ):
        raise SettingsError(
            f"--authz-failure-status {args.authz_failure_status}: must be an HTTP status other "
            f"than {', '.join(map(str, _AUTHZ_OWN_STATUSES))} (ext_authz's own answers)"
        )
    return XdsSettings(
        catalog=Path(args.catalog),
        env=environments.check_env_name(args.env) if args.env else None,
        host=args.xds_host,
        port=args.xds_port,
        http_host=args.xds_http_host,
        http_port=args.xds_http_port,
        debounce_ms=args.reload_debounce_ms,
        log_level=args.log_level,
        rollback_on_nack=args.rollback_on_nack,
        state_dir=state_dir_of(args, environ),
        tls=tls.server_tls("xds", args.xds_tls_cert, args.xds_tls_key, args.xds_tls_client_ca),
        **limits_of(args),
        translate=Options(
            listener_address=args.listener_address,
            listener_port=args.listener_port,
            authz=AuthzOptions(
                timeout_ms=args.authz_timeout_ms,
                failure_status=args.authz_failure_status,
                transport=authz_transport(args),
                policy_key=policy_key(args),
                engines=engines.from_args(args),
            ),
            edge=edge_options(args),
            observability=ObservabilityOptions(
                access_log=args.access_log,
                tracing=tracing_options(args, environ),
                health_event_log=health_event_log(args.health_event_log),
            ),
            regions=parse_regions(args.region),
            listener_tls=tls_settings.listener_tls(args),
            sds_dir=tls_settings.sds_dir(args),
            http_redirect_port=tls_settings.http_redirect_port(args),
        ),
    )


def health_event_log(value: str) -> str:
    """The event log's path, or "" for none; raise SettingsError for a relative one (Envoy
    would resolve it against its own working directory)."""
    if value in ("", "off"):
        return ""
    if not Path(value).is_absolute():
        raise SettingsError(f"--health-event-log {value!r}: must be an absolute path")
    return value


def state_dir_of(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    """`--state-dir`: unset, the default for the catalog (`state_dir.default_path`); empty,
    None (nothing kept)."""
    if args.state_dir is None:
        return default_path(Path(args.catalog), environ)
    return Path(args.state_dir) if args.state_dir else None


def policy_key(args: argparse.Namespace) -> bytes:
    """The key that signs route policies: the first of `--policy-key-file`'s; empty without one."""
    if not args.policy_key_file:
        return b""
    try:
        return read_policy_keys(Path(args.policy_key_file))[0]
    except (OSError, ValueError) as err:
        raise SettingsError(f"--policy-key-file: {err}") from None


def parse_regions(text: str) -> tuple[str, ...]:
    """'eu-west, eu-central' → ('eu-west', 'eu-central')."""
    return tuple(r.strip() for r in text.split(",") if r.strip())


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-server", description="Serve the catalog over ADS.")
    add_arguments(parser, environ)
    return parser


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> XdsSettings:
    return from_args(build_parser(environ).parse_args(argv), environ)
