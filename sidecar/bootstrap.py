"""Envoy bootstrap for the sidecar: ADS over HTTP/2 to the xDS server, a cluster for ext_authz
(its address is per deployment, so it lives here, not in xDS): HTTP/1.1 to its HTTP check
port, or HTTP/2 to its gRPC port, as `authz_transport` says (the xDS server must say the same);
admin on loopback.

With `tls` set, Envoy reaches both servers over TLS: it presents its client certificate (whose
SAN should be its node id), trusts only the given CA for the servers' certificates, and requires
each server's certificate to name the host Envoy dials (a DNS or IP SAN). The files are named
in the bootstrap (no SDS): Envoy reads them when it starts, so a new client certificate takes a
restart (or hot restart) of Envoy."""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar_shared import defaults
from sidecar_shared.contract import AUTHZ_CLUSTER
from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag

XDS_CLUSTER = "xds_cluster"
ADMIN_CLUSTER = "envoy_admin"
STATS_LISTENER = "envoy_stats"


@dataclass(frozen=True)
class ClientTls:
    """Envoy's client certificate chain and key, and the CA the servers' certificates must
    chain to: paths as Envoy sees them (PEM)."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class BootstrapOptions:
    node_id: str = defaults.NODE_ID
    node_cluster: str = defaults.NODE_CLUSTER
    xds_host: str = "127.0.0.1"
    xds_port: int = defaults.XDS_PORT
    admin_address: str = defaults.ENVOY_ADMIN_ADDRESS
    admin_port: int = defaults.ENVOY_ADMIN_PORT
    authz_host: str = "127.0.0.1"
    authz_port: int = defaults.AUTHZ_PORT  # gRPC
    authz_http_check_port: int = defaults.AUTHZ_HTTP_CHECK_PORT
    authz_transport: str = defaults.AUTHZ_TRANSPORT
    delta: bool = False
    max_downstream_connections: int = defaults.MAX_DOWNSTREAM_CONNECTIONS
    # The overload manager's heap monitor: shrink the heap at 95 %, refuse new requests at 98 %.
    max_heap_bytes: int = defaults.ENVOY_MAX_HEAP_BYTES
    # Back-off for re-opening the ADS stream after the control plane went away (Envoy's own
    # default starts at 500 ms and grows to 30 s: a restarted server waited seconds for Envoy).
    ads_retry_base_ms: int = defaults.ADS_RETRY_BASE_MS
    ads_retry_max_ms: int = defaults.ADS_RETRY_MAX_MS
    tls: ClientTls | None = None  # mTLS to the xDS server and ext_authz (None: plain text)
    # A listener on all addresses that answers GET /stats/prometheus from the admin and 404 to
    # anything else, so Prometheus can scrape Envoy without reaching its admin (None: none).
    stats_port: int | None = None
    # Where Envoy logs outlier ejections ("": nowhere); `sidecar up` gives the health event
    # log's file, so that `sidecar status --history` shows them (docs/environments.md).
    outlier_event_log: str = ""


def _seconds(ms: int) -> str:
    """A protobuf JSON Duration."""
    return f"{ms / 1000:.3f}s"


def _upstream_tls(tls: ClientTls, host: str, alpn: list[str]) -> dict[str, Any]:
    """A TLS transport socket: Envoy's client certificate, the servers' CA, and the server's
    certificate must name `host`."""
    try:
        ipaddress.ip_address(host)
        san_type = "IP_ADDRESS"
    except ValueError:
        san_type = "DNS"
    context: dict[str, Any] = {
        "tls_certificates": [
            {"certificate_chain": {"filename": tls.cert}, "private_key": {"filename": tls.key}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": tls.ca},
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
        },
    }
    if alpn:
        context["alpn_protocols"] = alpn
    typed: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": context,
    }
    if san_type == "DNS":
        typed["sni"] = host
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed}


def _h2_cluster(name: str, host: str, port: int, tls: ClientTls | None = None) -> dict[str, Any]:
    """A static cluster that speaks HTTP/2 (gRPC) to one address (over TLS with `tls`)."""
    cluster = _h1_cluster(name, host, port)
    if tls is not None:
        cluster["transport_socket"] = _upstream_tls(tls, host, ["h2"])
    return {
        **cluster,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                    }
                },
            }
        },
    }


def _h1_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A static cluster that speaks HTTP/1.1 (kept-alive connections) to one address."""
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def _authz_cluster(opts: BootstrapOptions) -> dict[str, Any]:
    if opts.authz_transport == "http":
        cluster = _h1_cluster(AUTHZ_CLUSTER, opts.authz_host, opts.authz_http_check_port)
        if opts.tls is not None:
            cluster["transport_socket"] = _upstream_tls(opts.tls, opts.authz_host, [])
        return cluster
    return _h2_cluster(AUTHZ_CLUSTER, opts.authz_host, opts.authz_port, opts.tls)


def _static_resources(opts: BootstrapOptions) -> dict[str, Any]:
    clusters = [
        _h2_cluster(XDS_CLUSTER, opts.xds_host, opts.xds_port, opts.tls),
        _authz_cluster(opts),
    ]
    if opts.stats_port is None:
        return {"clusters": clusters}
    admin_host = "127.0.0.1" if opts.admin_address in ("0.0.0.0", "") else opts.admin_address
    clusters.append(_h1_cluster(ADMIN_CLUSTER, admin_host, opts.admin_port))
    return {"clusters": clusters, "listeners": [_stats_listener(opts.stats_port)]}


def _stats_listener(port: int) -> dict[str, Any]:
    """GET /stats/prometheus (Envoy's stats in Prometheus' format, query string passed on) from
    the admin; every other method or path is a 404 that never reaches the admin."""
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    router = "envoy.extensions.filters.http.router.v3.Router"
    return {
        "name": STATS_LISTENER,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": f"type.googleapis.com/{hcm}",
                            "stat_prefix": STATS_LISTENER,
                            "normalize_path": True,
                            "merge_slashes": True,
                            "path_with_escaped_slashes_action": "REJECT_REQUEST",
                            "route_config": {
                                "name": STATS_LISTENER,
                                "virtual_hosts": [
                                    {
                                        "name": STATS_LISTENER,
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {
                                                    "path": "/stats/prometheus",
                                                    "headers": [
                                                        {
                                                            "name": ":method",
                                                            "string_match": {"exact": "GET"},
                                                        }
                                                    ],
                                                },
                                                "route": {"cluster": ADMIN_CLUSTER},
                                            },
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {"status": 404},
                                            },
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": f"type.googleapis.com/{router}"},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def render(opts: BootstrapOptions) -> dict[str, Any]:
    out = _render(opts)
    if opts.outlier_event_log:
        out["cluster_manager"] = {"outlier_detection": {"event_log_path": opts.outlier_event_log}}
    return out


def _render(opts: BootstrapOptions) -> dict[str, Any]:
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": opts.node_id, "cluster": opts.node_cluster},
        "admin": {
            "address": {
                "socket_address": {"address": opts.admin_address, "port_value": opts.admin_port}
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if opts.delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _seconds(opts.ads_retry_base_ms),
                                    "max_interval": _seconds(opts.ads_retry_max_ms),
                                }
                            },
                        }
                    }
                ],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": _static_resources(opts),
        # Internal listeners (the HTTP cache fetches through one: xds_server.resources.http_cache).
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap."
                    "internal_listener.v3.InternalListener"
                },
            }
        ],
        "overload_manager": _overload_manager(opts),
        "layered_runtime": RUNTIME,
    }


# Strict-path routes use one RE2 regex per longer base path, whose size grows with the path;
# Envoy refuses programs above 100 instructions unless told otherwise.
RUNTIME: dict[str, Any] = {
    "layers": [
        {"name": "static", "static_layer": {"re2.max_program_size.error_level": 10_000}},
        {"name": "admin", "admin_layer": {}},
    ]
}


def _overload_manager(opts: BootstrapOptions) -> dict[str, Any]:
    """Envoy's edge-proxy overload manager: a cap on downstream connections, and heap-based
    shedding (shrink the heap, then stop accepting requests)."""
    heap = "envoy.resource_monitors.fixed_heap"

    def action(name: str, at: float) -> dict[str, Any]:
        return {"name": name, "triggers": [{"name": heap, "threshold": {"value": at}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                    "fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": opts.max_heap_bytes,
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                    "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": opts.max_downstream_connections,
                },
            },
        ],
        "actions": [
            action("envoy.overload_actions.shrink_heap", defaults.ENVOY_HEAP_SHRINK_AT),
            action(
                "envoy.overload_actions.stop_accepting_requests",
                defaults.ENVOY_HEAP_STOP_ACCEPTING_AT,
            ),
        ],
    }


def render_json(opts: BootstrapOptions) -> str:
    return json.dumps(render(opts), indent=2, sort_keys=True) + "\n"


def add_client_tls_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """`--envoy-tls-cert`, `--envoy-tls-key`, `--envoy-tls-ca`: Envoy's client certificate for
    the xDS server and ext_authz, and the CA their certificates must chain to."""
    for name, help in (
        (
            "cert",
            "Envoy's PEM client certificate for the xDS server and ext_authz (its SAN: "
            "the node id)",
        ),
        ("key", "the private key of --envoy-tls-cert"),
        ("ca", "PEM CA bundle that the xDS server's and ext_authz's certificates must chain to"),
    ):
        add_flag(parser, f"envoy-tls-{name}", default=None, help=help, environ=environ)


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """The client TLS flags (None: none given). Raises SettingsError unless all three are."""
    given = (args.envoy_tls_cert, args.envoy_tls_key, args.envoy_tls_ca)
    if not any(given):
        return None
    if not all(given):
        raise SettingsError("--envoy-tls-cert, --envoy-tls-key and --envoy-tls-ca go together")
    return ClientTls(*given)
