"""The core promise under stress: every edit reaches Envoy promptly, a bad one changes nothing,
and a control plane that goes away or is refused never leaves Envoy half-configured."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.echo import EchoServer
from tests.support import http, stack, tokens, wait
from tests.support.ads_client import AdsClient
from tests.support.catalogs import write_json

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def save(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def edit(catalog: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(catalog.read_text())
    change(data)
    save(catalog, data)


def service(data: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in data["services"] if s["service_name"] == name)
    return found


def ok(envoy: stack.Envoy, path: str) -> bool:
    resp = http.try_get(envoy.url + path, tokens.bearer())
    return resp is not None and resp.status == 200


def dynamic_clusters(envoy: stack.Envoy) -> dict[str, list[dict[str, Any]]]:
    for section in envoy.config_dump()["configs"]:
        if section["@type"].endswith("ClustersConfigDump"):
            return {
                "active": section.get("dynamic_active_clusters", []),
                "warming": section.get("dynamic_warming_clusters", []),
            }
    return {"active": [], "warming": []}


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_huge_number_is_a_path_error_and_later_edits_still_apply(
    envoy: stack.Envoy, xds: stack.XdsServer, echo: Callable[[str], EchoServer]
) -> None:
    wait.wait_until(lambda: ok(envoy, "/orders/1"), what="initial routing")
    good = xds.version()
    edit(xds.catalog, lambda d: d["services"][1]["circuit_breaker"].update(max_connections=2**32))
    status = wait.wait_until(
        lambda: (s := xds.status()) and not s["catalog"]["valid"] and s, what="the rejection"
    )
    assert status["version"] == good
    assert any(
        e.startswith("services[1].circuit_breaker.max_connections: must be at most 4294967295")
        for e in status["catalog"]["errors"]
    ), status["catalog"]["errors"]
    assert "xds_catalog_valid 0.0" in xds.metrics()

    # The watcher is alive: the next edit (fixing it and adding a service) is served.
    upstream = echo("reports")

    def fix(d: dict[str, Any]) -> None:
        d["services"][1]["circuit_breaker"]["max_connections"] = 2**32 - 1
        d["services"].append(
            {
                "service_name": "reports",
                "base_path": "/reports",
                "internal_url": f"http://127.0.0.1:{upstream.port}",
            }
        )

    edit(xds.catalog, fix)
    wait.wait_until(lambda: ok(envoy, "/reports/1"), what="the service added after the error")
    assert "xds_catalog_valid 1.0" in xds.metrics()


def test_a_server_started_on_a_bad_catalog_waits_for_a_good_one(
    sample_catalog: Path, tmp_path: Path
) -> None:
    good = json.loads(sample_catalog.read_text())
    bad = json.loads(sample_catalog.read_text())
    bad["services"][0]["circuit_breaker"] = {"max_requests": 2**40}
    write_json(sample_catalog, bad)
    server = stack.start_xds(sample_catalog, tmp_path)
    with stack.stopping(server.proc):
        status = server.status()
        assert status["version"] is None
        assert any("circuit_breaker.max_requests" in e for e in status["catalog"]["errors"])
        assert http.get(f"http://127.0.0.1:{server.http_port}/ready").status == 503
        save(sample_catalog, good)
        wait.wait_until(server.version, what="the fixed catalog served")
        assert server.proc.alive()


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(connect_timeout_ms=2500),
        lambda s: s.update(circuit_breaker={"max_connections": 77}),
        lambda s: s.update(outlier_detection={"consecutive_5xx": 9}),
    ],
    ids=["connect_timeout", "circuit_breaker", "outlier_detection"],
)
def test_a_cluster_only_edit_is_applied_in_well_under_a_second(
    change: Callable[[dict[str, Any]], None], envoy: stack.Envoy, xds: stack.XdsServer
) -> None:
    wait.wait_until(lambda: xds.synced(envoy.node_id), what="initial sync")
    before = xds.status()
    started = time.monotonic()
    edit(xds.catalog, lambda d: change(service(d, "orders")))

    def applied() -> bool:
        status = xds.status()
        if status["version"] == before["version"] or not xds.synced(envoy.node_id):
            return False
        clusters = dynamic_clusters(envoy)
        orders = [c for c in clusters["active"] if c["cluster"]["name"] == "orders"]
        # Envoy shows the type's version under SotW, the cluster's own under Delta.
        expected = (
            xds.snapshot().resources[CDS]["orders"].version
            if envoy.delta
            else status["versions"][CDS]
        )
        return not clusters["warming"] and orders[0]["version_info"] == expected

    # Without endpoints re-sent after the cluster, Envoy waits 15 s (initial_fetch_timeout).
    wait.wait_until(applied, timeout=5, what="the cluster change ACKed and warm")
    elapsed_ms = (time.monotonic() - started) * 1000
    after = xds.status()["versions"]
    changed = {t.rsplit(".", 1)[-1] for t in after if before["versions"][t] != after[t]}
    assert changed == {"Cluster"}
    assert ok(envoy, "/orders/1")
    print(f"cluster-only edit ACKed and warm after {elapsed_ms:.0f} ms")


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_service_moved_to_another_healthy_upstream_leaves_the_old_one(
    envoy: stack.Envoy, xds: stack.XdsServer, echo: Callable[[str], EchoServer]
) -> None:
    old, new = echo("old-upstream"), echo("new-upstream")

    def add(d: dict[str, Any]) -> None:
        d["services"].append(
            {
                "service_name": "moving",
                "base_path": "/moving",
                "internal_url": f"http://127.0.0.1:{old.port}",
                "healthcheck_endpoint": "/healthz",
                "health_check": {"interval_ms": 200, "timeout_ms": 100},
            }
        )

    def served_by() -> set[str]:
        """Which upstreams answer 12 requests; Envoy's own replies (a 503 while the new host
        waits for its first health check) count by their status."""
        answers = [http.get(envoy.url + "/moving/x", tokens.bearer()) for _ in range(12)]
        return {a.json()["service"] if a.status == 200 else f"status {a.status}" for a in answers}

    edit(xds.catalog, add)
    wait.wait_until(lambda: ok(envoy, "/moving/x"), what="the new service")
    assert served_by() == {"old-upstream"}
    edit(
        xds.catalog,
        lambda d: service(d, "moving").update(internal_url=f"http://127.0.0.1:{new.port}"),
    )
    wait.wait_until(lambda: served_by() == {"new-upstream"}, what="traffic on the new upstream")
    # ... for good: the old host is gone from Envoy, not kept as pending_dynamic_removal.
    assert f"127.0.0.1:{old.port}" not in envoy.admin("/clusters").body.decode()
    assert served_by() == {"new-upstream"}


def start_faulty_xds(catalog: Path, tmp_path: Path, *args: str) -> stack.XdsServer:
    """The real server, except that services named `envoy-rejects-*` are clusters Envoy
    rejects (`tests.support.faulty_xds`)."""
    return stack.start_xds(catalog, tmp_path, module="tests.support.faulty_xds", args=list(args))


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_routes_are_held_while_envoy_rejects_the_clusters_they_name(
    sample_catalog: Path,
    authz: stack.Authz,
    tmp_path: Path,
    echo: Callable[[str], EchoServer],
    protocol: str,
) -> None:
    # Rollback off: the fleet stays on the rejected version, so what is held shows.
    xds = start_faulty_xds(sample_catalog, tmp_path, "--rollback-on-nack", "false")
    envoy = stack.start_envoy(xds, tmp_path, authz=authz, delta=protocol == "delta")
    with stack.stopping(envoy.proc, xds.proc):
        wait.wait_until(lambda: xds.synced(envoy.node_id), what="initial sync")
        routes_before = envoy.route_version()
        upstream = echo("rejected")

        def add(name: str) -> Callable[[dict[str, Any]], None]:
            return lambda d: d["services"].append(
                {
                    "service_name": name,
                    "base_path": "/x",
                    "internal_url": f"http://127.0.0.1:{upstream.port}",
                    "rbac_required": False,
                }
            )

        edit(xds.catalog, add("envoy-rejects-x"))

        def clusters_state() -> dict[str, Any]:
            (proxy,) = xds.status()["proxies"]
            clusters: dict[str, Any] = proxy["types"]["clusters"]
            return clusters

        nacked = wait.wait_until(
            lambda: (c := clusters_state())["state"] == "NACKED" and c, what="the NACK"
        )
        assert "255" in nacked["error"]
        # The routes were held back (STALE at the last good version), never sent to be NACKed.
        (proxy,) = xds.status()["proxies"]
        assert proxy["types"]["routes"]["state"] == "STALE"
        # The route naming the rejected cluster was never sent: /x is still unknown (404),
        # not a route to a missing cluster (503).
        assert http.get(envoy.url + "/x/1", tokens.bearer()).status == 404
        assert envoy.route_version() == routes_before
        assert ok(envoy, "/orders/1")

        # A fix moves clusters and routes forward together.
        def fix(d: dict[str, Any]) -> None:
            d["services"] = [s for s in d["services"] if s["service_name"] != "envoy-rejects-x"]
            add("accepted-x")(d)

        edit(xds.catalog, fix)
        wait.wait_until(lambda: ok(envoy, "/x/1"), what="the fixed service")
        wait.wait_until(lambda: xds.synced(envoy.node_id), what="all SYNCED again")


def test_a_stream_that_names_no_node_is_refused_logged_counted_and_listed(
    xds: stack.XdsServer,
) -> None:
    async def anonymous() -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(AdsClient(f"127.0.0.1:{xds.port}", None, "delta").run(), 10)
        return refused.value

    error = asyncio.run(anonymous())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.id" in (error.details() or "")
    (refused,) = wait.wait_until(lambda: xds.status()["refused"], what="the refusal listed")
    assert (refused["node_id"], refused["reason"]) == ("", "no_node_id")
    assert 'xds_refused_streams_total{reason="no_node_id"} 1.0' in xds.metrics()
    logged = [
        json.loads(line)
        for line in xds.proc.output().splitlines()
        if "refused a proxy's stream" in line
    ]
    assert logged and logged[0]["reason"] == "no_node_id"
    shown = xds.status_command()
    assert shown.returncode == 3  # refused, and no proxy connected: nothing is known to serve
    assert "REFUSED (no node id)" in shown.stdout and "no_node_id" in shown.stdout


def listener_changes(envoy: stack.Envoy) -> dict[str, int]:
    stats = envoy.admin("/stats?filter=^listener_manager.listener_(added|modified|removed)$")
    pairs = (line.split(": ") for line in stats.body.decode().splitlines())
    return {name.rsplit("_", 1)[1]: int(value) for name, value in pairs}


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_envoy_resyncs_within_a_second_or_two_after_the_control_plane_restarts(
    envoy: stack.Envoy, xds: stack.XdsServer, tmp_path: Path
) -> None:
    with stack.stopping(envoy.proc):
        wait.wait_until(lambda: xds.synced(envoy.node_id), what="initial sync")
        listeners_before = listener_changes(envoy)
        ports = (xds.port, xds.http_port, xds.listener_port)
        killed = time.monotonic()
        xds.proc.stop(sig=9)
        assert ok(envoy, "/orders/1"), "Envoy serves its last config while the server is away"
        restarted = stack.start_xds(
            xds.catalog, tmp_path, name="xds-again", ports=ports, transport=xds.transport
        )
        back = time.monotonic()
        with stack.stopping(restarted.proc):
            wait.wait_until(
                lambda: restarted.synced(envoy.node_id), timeout=5, what="Envoy back and SYNCED"
            )
            done = time.monotonic()
            print(
                f"resynced {(done - back) * 1000:.0f} ms after the server was back "
                f"({(done - killed) * 1000:.0f} ms after the kill)"
            )
            assert ok(envoy, "/orders/1")
            # The same versions on both sides: no listener was replaced.
            assert listener_changes(envoy) == listeners_before
