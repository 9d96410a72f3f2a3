"""A second Envoy as an upstream that answers every request itself (direct response): fast for
benchmarks, and, with `http2_only`, an upstream that speaks HTTP/2 only (cleartext, prior
knowledge) and tells which protocol a request came in (`x-protocol`)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from sidecar import commands
from sidecar_shared.supervise import find_envoy
from tests.support import stack, wait
from tests.support.ports import free_port

_TYPES = "type.googleapis.com/envoy.extensions.filters"


def bootstrap(
    port: int, admin_port: int, body: str = "ok", *, http2_only: bool = False
) -> dict[str, object]:
    route: dict[str, object] = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
    }
    if http2_only:
        route["response_headers_to_add"] = [
            {"header": {"key": "x-protocol", "value": "%PROTOCOL%"}}
        ]
    manager = {
        "@type": f"{_TYPES}.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "codec_type": "HTTP2" if http2_only else "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [route],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_TYPES}.http.router.v3.Router"},
            }
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": address,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(workdir: Path, *, http2_only: bool = False) -> tuple[stack.Proc, int]:
    """Start one (one worker); returns the process and its port once it accepts connections."""
    port = free_port()
    name = "h2-upstream" if http2_only else "upstream"
    config = workdir / f"{name}.json"
    config.write_text(json.dumps(bootstrap(port, free_port(), http2_only=http2_only)))
    argv = [*commands.envoy(find_envoy(), config, "warning"), "--concurrency", "1"]
    proc = stack.start(name, argv, workdir)
    wait.wait_until(lambda: _accepts(port), timeout=20, what=f"the {name}")
    return proc, port
