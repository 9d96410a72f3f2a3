"""Who may steer the fleet, against a real Envoy and a rogue ADS client on the same port: a
NACK from a duplicate of Envoy's node, from a client that is not an Envoy, or from a client
with no certificate never rolls back or bans a version, and no NACK undoes a revocation; an
Envoy whose first request is for a type we do not serve (RTDS) still gets its config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar import commands
from sidecar.bootstrap import BootstrapOptions, render
from sidecar.echo import EchoServer
from sidecar_shared import supervise
from tests.support import http, stack, tokens, wait
from tests.support.ads_client import AdsClient
from tests.support.catalogs import sample_data, write_json
from tests.support.ports import free_port
from xds_server import typeurls
from xds_server.catalog import load_catalog

RDS, LDS = typeurls.ROUTE, typeurls.LISTENER
NODE = "sidecar-envoy"
SERVICES = 2000


def save(path: Path, data: Any) -> None:
    tmp = path.with_name("next.json")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@pytest.fixture
def big_catalog(tmp_path: Path, echo: Callable[[str], EchoServer]) -> Path:
    """The sample catalog with its services on echo upstreams, grown to `SERVICES` services."""
    data = sample_data()
    data["services"] = [s for s in data["services"] if s["service_name"] == "orders"]
    data["services"][0]["internal_url"] = f"http://127.0.0.1:{echo('orders').port}"
    data["services"][0].pop("endpoints", None)  # the whole service under one policy
    data["roles"] = {"admin": ["*"], "customer": ["orders:read", "orders:write"]}
    data.pop("tests")  # the sample's access tests name the services and roles dropped here
    data["services"] += [
        {
            "service_name": f"filler-{i}",
            "base_path": f"/filler-{i}",
            "internal_url": "http://127.0.0.1:9",
        }
        for i in range(SERVICES - 1)
    ]
    path = tmp_path / "catalog" / "catalog.json"
    path.parent.mkdir()
    write_json(path, data)
    load_catalog(path)  # valid, or the tests would wait minutes for a sync that cannot come
    return path


def post_status(envoy: stack.Envoy) -> int:
    resp = http.http(
        "POST", envoy.url + "/orders/1", {**tokens.bearer(roles=["customer"])}, body=b"{}"
    )
    return resp.status


def rejects_routes_after(accepted: int) -> Callable[[str, Mapping[str, bytes]], str | None]:
    """A client's rule: ACK the first `accepted` route responses, NACK every later one."""
    seen = [0]

    def reject(type_url: str, resources: Mapping[str, bytes]) -> str | None:
        if type_url != RDS:
            return None
        seen[0] += 1
        return None if seen[0] <= accepted else "rogue: no"

    return reject


@contextlib.contextmanager
def running(client: AdsClient) -> Iterator[asyncio.AbstractEventLoop]:
    """Run `client` on an event loop in a thread of its own until the block ends."""
    import threading  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(client.run()))
        with contextlib.suppress(BaseException):
            loop.run_until_complete(task[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        wait.wait_until(lambda: bool(task), what="the client started")
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(10)
        loop.close()


def nacks(xds: stack.XdsServer, short: str) -> float:
    for line in xds.metrics().splitlines():
        if line.startswith(f'xds_nacks_total{{type="{short}"}}'):
            return float(line.split()[-1])
    return 0.0


def revoke(data: dict[str, Any]) -> dict[str, Any]:
    data["roles"]["customer"] = [p for p in data["roles"]["customer"] if p != "orders:write"]
    return data


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_duplicate_node_racing_a_revocation_with_a_nack_does_not_undo_it(
    big_catalog: Path, authz: stack.Authz, tmp_path: Path, protocol: str
) -> None:
    # Even with unauthenticated vetoes allowed: the rogue names Envoy's node, a duplicate.
    xds = stack.start_xds(big_catalog, tmp_path, args=stack.VETO_UNAUTHENTICATED)
    envoy = stack.start_envoy(
        xds, tmp_path, node_id=NODE, authz=authz, delta=protocol == "delta", wait=False
    )
    with stack.stopping(envoy.proc, xds.proc):
        wait.wait_until(lambda: xds.synced(NODE), timeout=120, what="Envoy in sync")
        wait.wait_until(lambda: post_status(envoy) == 200, timeout=60, what="the route")
        assert post_status(envoy) == 200
        rogue = AdsClient(f"127.0.0.1:{xds.port}", NODE, protocol, rejects_routes_after(1))
        with running(rogue):
            wait.wait_until(
                lambda: rogue.has(xds.status()["versions"]), timeout=60, what="the rogue in sync"
            )
            data = revoke(json.loads(big_catalog.read_text()))
            save(big_catalog, data)
            revoked = xds.snapshot()
            wait.wait_until(lambda: nacks(xds, "routes") >= 1, timeout=60, what="the rogue's NACK")
            wait.wait_until(
                lambda: envoy.route_version() == xds.route_version_for(envoy, revoked),
                timeout=60,
                what="Envoy on the revocation",
            )
            status = xds.status()
            assert status["version"] == revoked.version
            assert status["rejected"] == []
            assert post_status(envoy) == 403
            # Both streams of the node are listed, each with its own peer.
            peers = [p["peer"] for p in status["proxies"] if p["node_id"] == NODE]
            assert len(peers) == 2 and len(set(peers)) == 2, status["proxies"]
            # Saving the revocation again is not refused: it was never rejected.
            save(big_catalog, {**data, "roles": {**data["roles"]}})
            assert xds.version() == revoked.version


@pytest.mark.parametrize("veto", [False, True], ids=["default", "unauthenticated-veto"])
@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_proxy_holding_an_old_version_cannot_roll_the_fleet_back_past_a_revocation(
    big_catalog: Path, authz: stack.Authz, tmp_path: Path, protocol: str, veto: bool
) -> None:
    # A node of its own that ACKed the first version and NACKs every later route config:
    # by default it may not veto at all; allowed to, no rollback grants what was revoked.
    args = stack.VETO_UNAUTHENTICATED if veto else []
    xds = stack.start_xds(big_catalog, tmp_path, args=args)
    envoy = stack.start_envoy(
        xds, tmp_path, node_id=NODE, authz=authz, delta=protocol == "delta", wait=False
    )
    with stack.stopping(envoy.proc, xds.proc):
        wait.wait_until(lambda: xds.synced(NODE), timeout=120, what="Envoy in sync")
        wait.wait_until(lambda: post_status(envoy) == 200, timeout=60, what="the route")
        rogue = AdsClient(f"127.0.0.1:{xds.port}", "holder", protocol, rejects_routes_after(1))
        with running(rogue):
            wait.wait_until(
                lambda: rogue.has(xds.status()["versions"]), timeout=60, what="the rogue in sync"
            )
            data = revoke(json.loads(big_catalog.read_text()))
            save(big_catalog, data)
            wait.wait_until(lambda: nacks(xds, "routes") >= 1, timeout=60, what="the first NACK")
            data["services"][1]["timeout_ms"] = 4321  # a later, unrelated edit
            save(big_catalog, data)
            edited = xds.snapshot()
            wait.wait_until(lambda: nacks(xds, "routes") >= 2, timeout=60, what="the second NACK")
            wait.wait_until(
                lambda: envoy.route_version() == xds.route_version_for(envoy, edited),
                timeout=60,
                what="Envoy on the edit",
            )
            status = xds.status()
            assert status["version"] == edited.version
            assert all(r["rolled_back_to"] is None for r in status["rejected"])
            if not veto:
                assert status["rejected"] == []
            assert post_status(envoy) == 403


def test_a_proxyless_grpc_client_that_would_reject_the_listener_does_not_veto(
    sample_catalog: Path, authz: stack.Authz, tmp_path: Path
) -> None:
    # The gRPC client connects first; it is refused (xds_server.proxyless) before it can NACK.
    xds = stack.start_xds(sample_catalog, tmp_path, args=stack.VETO_UNAUTHENTICATED)

    def no_ext_authz(type_url: str, resources: Mapping[str, bytes]) -> str | None:
        return "envoy.filters.http.ext_authz: filter not supported" if type_url == LDS else None

    grpc_client = AdsClient(
        f"127.0.0.1:{xds.port}", "grpc-app", "sotw", no_ext_authz, user_agent="gRPC Python 1.70"
    )
    with stack.stopping(xds.proc):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            asyncio.run(asyncio.wait_for(grpc_client.run(), 30))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert [r["reason"] for r in xds.status()["refused"]] == ["proxyless_grpc"]
        envoy = stack.start_envoy(xds, tmp_path, node_id=NODE, authz=authz)
        with stack.stopping(envoy.proc):
            wait.wait_until(lambda: xds.synced(NODE), what="Envoy in sync")
            data = json.loads(sample_catalog.read_text())
            data["services"][0]["timeout_ms"] = 4321
            save(sample_catalog, data)
            edited = xds.snapshot()
            wait.wait_until(
                lambda: xds.version() == edited.version and xds.synced(NODE),
                what="Envoy on the edit",
            )
            status = xds.status()
            assert status["rejected"] == [] and nacks(xds, "listeners") == 0
            assert [p["node_id"] for p in status["proxies"]] == [NODE]


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_an_envoy_with_a_runtime_layer_over_ads_gets_its_config(
    sample_catalog: Path, authz: stack.Authz, tmp_path: Path, protocol: str
) -> None:
    xds = stack.start_xds(sample_catalog, tmp_path)
    admin_port = free_port()
    bootstrap = render(
        BootstrapOptions(
            node_id=NODE,
            xds_port=xds.port,
            admin_port=admin_port,
            authz_port=authz.port_for(xds.transport),
            authz_http_check_port=authz.port_for(xds.transport),
            authz_transport=xds.transport,
            delta=protocol == "delta",
        )
    )
    # RTDS over ADS: Envoy asks for a Runtime first; we serve none, so it goes on after its
    # initial fetch timeout.
    layers = bootstrap["layered_runtime"]["layers"]
    bootstrap["layered_runtime"] = {
        "layers": [
            *layers,
            {
                "name": "rtds",
                "rtds_layer": {
                    "name": "rtds",
                    "rtds_config": {
                        "ads": {},
                        "resource_api_version": "V3",
                        "initial_fetch_timeout": "1s",
                    },
                },
            },
        ]
    }
    path = tmp_path / "rtds-envoy.json"
    path.write_text(json.dumps(bootstrap))
    proc = stack.start("rtds-envoy", commands.envoy(supervise.find_envoy(), path, "info"), tmp_path)
    envoy = stack.Envoy(proc, admin_port, xds.listener_port, NODE, protocol == "delta")
    with stack.stopping(proc, xds.proc):
        wait.wait_until(lambda: xds.synced(NODE), timeout=30, what="Envoy in sync")
        stack.wait_for_route(envoy, "/orders/1")
        assert http.get(envoy.url + "/orders/1", tokens.bearer()).status == 200
        status = xds.status()
        assert status["refused"] == []
        metrics = xds.metrics()
        assert "xds_refused_streams_total" not in metrics or 'reason="no_node_id"' not in metrics


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_requests_for_types_we_do_not_serve_leave_the_stream_alive(
    xds: stack.XdsServer, protocol: str
) -> None:
    from envoy.config.core.v3 import base_pb2  # noqa: PLC0415
    from envoy.service.discovery.v3 import discovery_pb2  # noqa: PLC0415

    odd = [
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",  # SDS
        "type.googleapis.com/envoy.config.route.v3.VirtualHost",  # VHDS
        "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration",
        "type.googleapis.com/made.up.Thing",
        "",
    ]

    async def scenario() -> None:
        import grpc  # noqa: PLC0415
        from envoy.service.discovery.v3 import ads_pb2_grpc  # noqa: PLC0415

        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            node = base_pb2.Node(id="odd", user_agent_name="envoy")
            cds = typeurls.CLUSTER
            if protocol == "delta":
                reqs: list[Any] = [
                    discovery_pb2.DeltaDiscoveryRequest(type_url=t, node=node) for t in odd
                ] + [discovery_pb2.DeltaDiscoveryRequest(type_url=cds)]
                call: Any = stub.DeltaAggregatedResources(iter(reqs))
            else:
                reqs = [discovery_pb2.DiscoveryRequest(type_url=t, node=node) for t in odd] + [
                    discovery_pb2.DiscoveryRequest(type_url=cds)
                ]
                call = stub.StreamAggregatedResources(iter(reqs))
            first = await asyncio.wait_for(call.read(), 10)
            assert first.type_url == cds
            call.cancel()

    asyncio.run(scenario())
    assert xds.status()["refused"] == []
