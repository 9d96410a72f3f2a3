"""The xDS server's settings: built once from flags and `SIDECAR_*` variables, passed down."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar_shared import defaults
from sidecar_shared.flags import add_flag, boolean
from xds_server.translate import AuthzOptions, Options


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


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    def flag(name: str, default: object, help: str, type: Callable[[str], Any] = str) -> None:
        add_flag(parser, name, default=default, help=help, type=type, environ=environ)

    flag("catalog", defaults.CATALOG, "catalog file")
    flag("xds-host", defaults.XDS_HOST, "xDS gRPC address")
    flag("xds-port", defaults.XDS_PORT, "xDS gRPC port", int)
    flag("xds-http-host", defaults.XDS_HTTP_HOST, "metrics/status address")
    flag("xds-http-port", defaults.XDS_HTTP_PORT, "metrics/status port", int)
    flag("listener-address", defaults.LISTENER_ADDRESS, "address Envoy's listener binds")
    flag("listener-port", defaults.LISTENER_PORT, "Envoy's listener port", int)
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
    flag(
        "rollback-on-nack",
        defaults.ROLLBACK_ON_NACK,
        "when Envoy rejects a version, move every proxy back to the last one all of them "
        "accepted (true/false)",
        boolean,
    )
    flag("log-level", "info", "log level")


def from_args(args: argparse.Namespace) -> XdsSettings:
    return XdsSettings(
        catalog=Path(args.catalog),
        host=args.xds_host,
        port=args.xds_port,
        http_host=args.xds_http_host,
        http_port=args.xds_http_port,
        debounce_ms=args.reload_debounce_ms,
        log_level=args.log_level,
        rollback_on_nack=args.rollback_on_nack,
        translate=Options(
            listener_address=args.listener_address,
            listener_port=args.listener_port,
            authz=AuthzOptions(
                timeout_ms=args.authz_timeout_ms, failure_status=args.authz_failure_status
            ),
        ),
    )


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-server", description="Serve the catalog over ADS.")
    add_arguments(parser, environ)
    return parser


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> XdsSettings:
    return from_args(build_parser(environ).parse_args(argv))
