"""An Envoy configured by someone else (a static configuration, no xDS server of ours) that calls
our ext_authz over HTTP and forwards every client header to it: nothing a client sends can
become the route's policy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import commands
from sidecar.echo import EchoServer
from sidecar_shared import contract, supervise
from sidecar_shared.contract import CHECK_PATH_PREFIX, POLICY_HEADER, RoutePolicy
from tests.support import http, stack, tokens, wait
from tests.support.policies import encode
from tests.support.ports import free_port

_FILTERS = "type.googleapis.com/envoy.extensions.filters"
OTHER_KEY = b"a-key-that-is-not-the-xds-servers-0123456789"


def _cluster(name: str, port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def foreign_bootstrap(port: int, admin_port: int, app_port: int, authz_port: int) -> Any:
    """Every request goes to `app` after our ext_authz's HTTP check, to which Envoy forwards
    all of the client's headers; no route carries a policy."""
    authz = {
        "@type": f"{_FILTERS}.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "allowed_headers": {"patterns": [{"safe_regex": {"regex": ".*"}}]},
        "http_service": {
            "server_uri": {"uri": "http://ext_authz", "cluster": "ext_authz", "timeout": "2s"},
            "path_prefix": CHECK_PATH_PREFIX,
        },
    }
    manager = {
        "@type": f"{_FILTERS}.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "foreign",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": authz},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_FILTERS}.http.router.v3.Router"},
            },
        ],
    }
    listener = {
        "name": "foreign",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
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
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [listener],
            "clusters": [_cluster("app", app_port), _cluster("ext_authz", authz_port)],
        },
    }


@pytest.fixture
def foreign_envoy(
    authz: stack.Authz, echo: Callable[[str], EchoServer], tmp_path: Path
) -> Iterator[str]:
    """The foreign Envoy's URL, once it is ready."""
    port, admin_port = free_port(), free_port()
    config = foreign_bootstrap(port, admin_port, echo("app").port, authz.check_port)
    path = tmp_path / "foreign-envoy.json"
    path.write_text(json.dumps(config))
    proc = stack.start(
        "foreign-envoy", commands.envoy(supervise.find_envoy(), path, "warning"), tmp_path
    )
    try:

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"envoy exited:\n{proc.output()}")
            resp = http.try_get(f"http://127.0.0.1:{admin_port}/ready")
            return resp is not None and resp.status == 200

        wait.wait_until(ready, what="the foreign Envoy to be ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_no_policy_a_client_sends_takes_effect(foreign_envoy: str, authz: stack.Authz) -> None:
    url = foreign_envoy + "/orders/1"
    public = contract.encode(RoutePolicy(service="orders", public=True))
    # The route has no policy: ext_authz is reached, and fails closed.
    assert http.get(url).status == 403
    for forged in (public, contract.sign(public, OTHER_KEY)):
        assert http.get(url, {POLICY_HEADER: forged}).status == 403
        # with a valid token too: a client's policy is no policy at all
        assert http.get(url, {POLICY_HEADER: forged, **tokens.bearer()}).status == 403
    records = wait.wait_until(
        lambda: a if len(a := authz.audit_lines()) >= 5 else None, what="5 audit records"
    )
    assert [r["reason"] for r in records] == ["no_policy"] + ["policy_unauthenticated"] * 4


def test_a_policy_our_xds_server_signed_is_believed_through_it(
    foreign_envoy: str, authz: stack.Authz
) -> None:
    """What the MAC proves is who wrote the policy, not which Envoy carried it: a signed
    policy (only our xDS server can make one) decides, as it would through our own Envoy."""
    signed = encode(RoutePolicy(service="orders", public=True))
    resp = http.get(foreign_envoy + "/orders/1", {POLICY_HEADER: signed})
    assert resp.status == 200
    assert resp.json()["headers"].get("x-user-id") is None
