"""The xDS server's settings: built once from flags and `SIDECAR_*` variables, passed down."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.envflags import add_flag
from xds_server.translate import AuthzOptions, Options

DEFAULT_CATALOG = "service_catalog.json"


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


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_flag(parser, "catalog", default=DEFAULT_CATALOG, help="catalog file", environ=environ)
    add_flag(parser, "xds-host", default="0.0.0.0", help="xDS gRPC address", environ=environ)
    add_flag(parser, "xds-port", type=int, default=18000, help="xDS gRPC port", environ=environ)
    add_flag(
        parser, "xds-http-host", default="127.0.0.1", help="metrics/status address", environ=environ
    )
    add_flag(
        parser,
        "xds-http-port",
        type=int,
        default=18080,
        help="metrics/status port",
        environ=environ,
    )
    add_flag(
        parser,
        "listener-address",
        default="0.0.0.0",
        help="address Envoy's listener binds",
        environ=environ,
    )
    add_flag(
        parser,
        "listener-port",
        type=int,
        default=10000,
        help="Envoy's listener port",
        environ=environ,
    )
    add_flag(
        parser,
        "reload-debounce-ms",
        type=int,
        default=20,
        help="wait this long for a save to settle before reloading",
        environ=environ,
    )
    add_flag(
        parser,
        "authz-timeout-ms",
        type=int,
        default=200,
        help="how long Envoy waits for ext_authz",
        environ=environ,
    )
    add_flag(
        parser,
        "authz-failure-status",
        type=int,
        default=503,
        help="HTTP status Envoy answers when ext_authz cannot be reached",
        environ=environ,
    )
    add_flag(parser, "log-level", default="info", help="log level", environ=environ)


def from_args(args: argparse.Namespace) -> XdsSettings:
    return XdsSettings(
        catalog=Path(args.catalog),
        host=args.xds_host,
        port=args.xds_port,
        http_host=args.xds_http_host,
        http_port=args.xds_http_port,
        debounce_ms=args.reload_debounce_ms,
        log_level=args.log_level,
        translate=Options(
            listener_address=args.listener_address,
            listener_port=args.listener_port,
            authz=AuthzOptions(
                timeout_ms=args.authz_timeout_ms, failure_status=args.authz_failure_status
            ),
        ),
    )


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> XdsSettings:
    parser = argparse.ArgumentParser(prog="xds-server", description="Serve the catalog over ADS.")
    add_arguments(parser, environ)
    return from_args(parser.parse_args(argv))
