"""What a grpcio client sees for each denial, through a real Envoy on both ext_authz transports:
a rate limit is RESOURCE_EXHAUSTED (a standard retry policy does not retry it), a missing token
UNAUTHENTICATED, a role that may not call PERMISSION_DENIED. An HTTP client gets no
`grpc-status` header."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from tests.support import http, stack, tokens, wait
from tests.support.grpc_upstream import GrpcUpstream, call


@pytest.fixture(params=["grpc", "http"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, GrpcUpstream]]:
    """Envoy's listener port, in front of a gRPC service allowing each user 2 calls a minute,
    with ext_authz called over the parametrized transport."""
    up = GrpcUpstream().start()
    service = {
        "service_name": "echo",
        "base_path": "/test.Echo",
        "internal_url": up.url,
        "protocol": "grpc",
        "rate_limit": {"requests_per_minute": 2},
    }
    catalog = tmp_path / "service_catalog.json"
    roles = {"admin": ["*"], "reader": ["echo:read"]}
    catalog.write_text(json.dumps({"services": [service], "roles": roles}))
    with ExitStack() as stop:
        stop.callback(up.stop)
        xds = stack.start_xds(catalog, tmp_path, transport=request.param)
        stop.callback(xds.proc.stop)
        authz = stack.start_authz(tmp_path)
        stop.callback(authz.proc.stop)
        envoy = stack.start_envoy(xds, tmp_path, authz=authz)
        stop.callback(envoy.proc.stop)
        wait.wait_until(lambda: xds.synced(envoy.node_id), what="Envoy synced")
        yield envoy.listener_port, up


def code_of(port: int, metadata: list[tuple[str, str]] | None = None) -> grpc.StatusCode:
    try:
        call(port, b"x", metadata=metadata)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        return code
    return grpc.StatusCode.OK


def test_each_denial_has_its_grpc_status(limited: tuple[int, GrpcUpstream]) -> None:
    port, up = limited
    assert code_of(port) == grpc.StatusCode.UNAUTHENTICATED
    # `reader` may only read; a gRPC call is a POST, a write.
    reader = list(tokens.bearer(roles=["reader"]).items())
    assert code_of(port, reader) == grpc.StatusCode.PERMISSION_DENIED
    alice = list(tokens.bearer().items())
    assert [code_of(port, alice) for _ in range(4)] == [
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ]
    assert up.calls == 2


def test_an_http_client_over_the_limit_gets_no_grpc_status(
    limited: tuple[int, GrpcUpstream],
) -> None:
    port, _ = limited
    url = f"http://127.0.0.1:{port}/test.Echo/Call"
    headers = tokens.bearer(sub="bob")
    statuses = [http.http("POST", url, headers, b"") for _ in range(3)]
    assert statuses[2].status == 429
    assert "grpc-status" not in statuses[2].headers
