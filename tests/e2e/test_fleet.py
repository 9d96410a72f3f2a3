"""Many Envoys on one control plane, speaking either protocol, and a fleet that never stays
split when Envoy rejects a version."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from tests.support import http, stack, tokens, wait
from xds_server.snapshot import Snapshot


def save(path: Path, data: Any, indent: int = 2) -> None:
    tmp = path.with_name("next.json")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def converged(xds: stack.XdsServer, envoys: list[stack.Envoy], expected: Snapshot) -> bool:
    """Every Envoy connected, SYNCED on `expected` (served now) and holding its routes."""
    status = xds.status()
    nodes = {p["node_id"] for p in status["proxies"]}
    return (
        status["version"] == expected.version
        and nodes == {e.node_id for e in envoys}
        and all(
            len(p["types"]) == 4 and all(t["state"] == "SYNCED" for t in p["types"].values())
            for p in status["proxies"]
        )
        and all(e.route_version() == xds.route_version_for(e, expected) for e in envoys)
    )


@pytest.fixture
def xds(
    request: pytest.FixtureRequest, sample_catalog: Path, tmp_path: Path
) -> Iterator[stack.XdsServer]:
    """The xDS server (rollback on, the default); parametrized "faulty", the real server
    except that services named `envoy-rejects-*` are clusters Envoy rejects."""
    faulty = getattr(request, "param", "") == "faulty"
    module = "tests.support.faulty_xds" if faulty else "xds_server"
    server = stack.start_xds(
        sample_catalog, tmp_path, module=module, args=stack.VETO_UNAUTHENTICATED
    )
    yield server
    server.proc.stop()


def serves(envoy: stack.Envoy, path: str) -> bool:
    resp = http.try_get(envoy.url + path, tokens.bearer())
    return resp is not None and resp.status == 200


@pytest.fixture
def fleet(
    request: pytest.FixtureRequest, xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path
) -> Iterator[list[stack.Envoy]]:
    protocols: tuple[str, ...] = request.param
    envoys = [
        stack.start_envoy(xds, tmp_path, node_id=f"edge-{i}", authz=authz, delta=p == "delta")
        for i, p in enumerate(protocols)
    ]
    yield envoys
    for e in envoys:
        e.proc.stop()


def log_records(xds: stack.XdsServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in xds.proc.output().splitlines() if line.startswith("{")]


FLEETS = [("sotw", "sotw"), ("delta", "delta"), ("sotw", "delta")]


@pytest.mark.parametrize("fleet", FLEETS, indirect=True, ids=["sotw", "delta", "mixed"])
def test_envoys_converge_on_every_version(xds: stack.XdsServer, fleet: list[stack.Envoy]) -> None:
    wait.wait_until(lambda: converged(xds, fleet, xds.snapshot()), what="all SYNCED")
    data = json.loads(xds.catalog.read_text())
    data["services"][1]["timeout_ms"] = 3000
    save(xds.catalog, data)
    wait.wait_until(lambda: converged(xds, fleet, xds.snapshot()), what="all SYNCED again")


@pytest.mark.parametrize("fleet", FLEETS, indirect=True, ids=["sotw", "delta", "mixed"])
@pytest.mark.parametrize("xds", ["faulty"], indirect=True)
def test_a_version_envoy_rejects_rolls_the_fleet_back_and_the_next_edit_moves_it_on(
    xds: stack.XdsServer, fleet: list[stack.Envoy], echo: Callable[[str], EchoServer]
) -> None:
    good_catalog = xds.catalog.with_name("good.json")
    good_catalog.write_text(xds.catalog.read_text())
    expected = xds.snapshot(good_catalog)
    wait.wait_until(lambda: converged(xds, fleet, expected), what="all SYNCED")
    good = expected.version
    upstream = echo("new")

    def add(name: str, path: str) -> dict[str, Any]:
        return {
            "service_name": name,
            "base_path": path,
            "internal_url": f"http://127.0.0.1:{upstream.port}",
            "rbac_required": False,
        }

    data = json.loads(xds.catalog.read_text())
    data["services"] += [add("envoy-rejects-x", "/x"), add("fine", "/fine")]
    save(xds.catalog, data)

    (rejected,) = wait.wait_until(lambda: xds.status()["rejected"], what="the rejection")
    assert rejected["type"] == "clusters" and "255" in rejected["error"]
    assert rejected["rolled_back_to"] == good
    bad = rejected["version"]
    # Each proxy's NACK is logged with who, what and Envoy's reason.
    nacks = wait.wait_until(
        lambda: [r for r in log_records(xds) if r["message"] == "envoy rejected a config"],
        what="the NACK logged",
    )
    assert {r["node_id"] for r in nacks} <= {f"edge-{i}" for i in range(len(fleet))}
    assert all(r["type"] == "clusters" and "255" in r["error"] for r in nacks), nacks
    wait.wait_until(lambda: converged(xds, fleet, expected), what="every proxy back on good")
    status = xds.status()
    assert status["catalog"]["valid"] is False
    (problem,) = status["catalog"]["errors"]
    assert problem.startswith(f"version {bad} was rejected by Envoy")
    assert problem.endswith(f"every proxy was rolled back to {good}")
    metrics = xds.metrics()
    assert "xds_rollbacks_total 1.0" in metrics
    assert 'xds_catalog_reloads_total{result="rejected"} 1.0' in metrics
    # The fleet never split: no Envoy routes the service that came with the rejected version.
    for e in fleet:
        assert http.get(e.url + "/fine/1", tokens.bearer()).status == 404
        assert http.get(e.url + "/orders/1", tokens.bearer()).status == 200
    shown = xds.status_command()
    assert f"REJECTED version {bad}" in shown.stdout, shown.stdout

    # The rejected content saved again is refused (not sent to be rejected again).
    save(xds.catalog, data, indent=4)
    wait.wait_until(
        lambda: 'xds_catalog_reloads_total{result="rejected"} 2.0' in xds.metrics(),
        what="the same version refused",
    )
    assert xds.version() == good

    # The next valid edit moves every proxy forward.
    data["services"] = [s for s in data["services"] if s["service_name"] != "envoy-rejects-x"]
    save(xds.catalog, data)
    fixed = xds.snapshot()
    assert fixed.version not in (good, bad)
    wait.wait_until(lambda: converged(xds, fleet, fixed), what="all on the fix")
    wait.wait_until(
        lambda: all(serves(e, "/fine/1") for e in fleet), what="the new service on every Envoy"
    )
    assert xds.status()["catalog"]["valid"] is True
