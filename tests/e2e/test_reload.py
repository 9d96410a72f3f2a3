"""Catalog edits reach a running Envoy without a restart; bad edits change nothing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from tests.support import http, stack, tokens, wait
from tests.support.catalogs import write_json


def status_200(envoy: stack.Envoy, path: str) -> Callable[[], Any]:
    return lambda: (r := http.try_get(envoy.url + path, tokens.bearer())) and r.status == 200 and r


def add_service(catalog: Path, name: str, port: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(catalog.read_text())
    data["services"].append(
        {"service_name": name, "base_path": f"/{name}", "internal_url": f"http://127.0.0.1:{port}"}
    )
    return data


def save_in_place(path: Path, data: Any) -> None:
    with path.open("r+") as f:
        f.truncate(0)
        f.write(json.dumps(data, indent=2))


def save_by_rename(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_by_delete_and_recreate(path: Path, data: Any) -> None:
    path.unlink()
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
@pytest.mark.parametrize(
    "save", [save_in_place, save_by_rename, save_by_delete_and_recreate], ids=lambda f: f.__name__
)
def test_a_new_service_is_reachable_without_a_restart(
    save: Callable[[Path, Any], None],
    envoy: stack.Envoy,
    xds: stack.XdsServer,
    echo: Callable[[str], EchoServer],
) -> None:
    wait.wait_until(status_200(envoy, "/orders/1"), what="initial routing")
    assert http.get(envoy.url + "/reports/1", tokens.bearer()).status == 404
    upstream = echo("reports")
    (proxy,) = xds.status()["proxies"]

    save(xds.catalog, add_service(xds.catalog, "reports", upstream.port))

    resp = wait.wait_until(status_200(envoy, "/reports/1"), what="the new route")
    assert resp.json()["service"] == "reports"
    assert http.get(envoy.url + "/orders/1", tokens.bearer()).status == 200
    # The same ADS stream carried the change: neither side restarted nor reconnected.
    (after,) = xds.status()["proxies"]
    assert after["connected_at"] == proxy["connected_at"]
    assert envoy.proc.alive() and xds.proc.alive()


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_bad_edit_keeps_traffic_unchanged_and_is_reported(
    envoy: stack.Envoy, xds: stack.XdsServer, echo: Callable[[str], EchoServer]
) -> None:
    wait.wait_until(status_200(envoy, "/orders/1"), what="initial routing")
    good_version = wait.wait_until(xds.version)
    data = add_service(xds.catalog, "reports", echo("reports").port)
    data["services"][0]["retry_policy"]["max_retries"] = 99  # invalid
    save_by_rename(xds.catalog, data)

    status = wait.wait_until(
        lambda: (s := xds.status()) and not s["catalog"]["valid"] and s, what="the rejection"
    )
    assert status["version"] == good_version
    assert any("services[0].retry_policy.max_retries" in e for e in status["catalog"]["errors"])
    assert 'xds_catalog_reloads_total{result="invalid"}' in xds.metrics()
    assert "services[0].retry_policy.max_retries" in xds.proc.output()
    assert http.get(envoy.url + "/orders/1", tokens.bearer()).status == 200
    assert http.get(envoy.url + "/reports/1", tokens.bearer()).status == 404

    # Fixing the file recovers, with no restart.
    data["services"][0]["retry_policy"]["max_retries"] = 2
    save_by_rename(xds.catalog, data)
    wait.wait_until(status_200(envoy, "/reports/1"), what="recovery after the fix")
    assert xds.status()["catalog"]["valid"] is True


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_deleted_catalog_keeps_the_last_good_config(
    envoy: stack.Envoy, xds: stack.XdsServer
) -> None:
    wait.wait_until(status_200(envoy, "/orders/1"), what="initial routing")
    saved = json.loads(xds.catalog.read_text())
    xds.catalog.unlink()
    wait.wait_until(lambda: not xds.status()["catalog"]["valid"], what="the missing file noticed")
    assert http.get(envoy.url + "/orders/1", tokens.bearer()).status == 200
    write_json(xds.catalog, saved)
    wait.wait_until(lambda: xds.status()["catalog"]["valid"], what="the file back")


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_timeout_edit_changes_only_the_routes_version(
    envoy: stack.Envoy, xds: stack.XdsServer
) -> None:
    wait.wait_until(status_200(envoy, "/orders/1"), what="initial routing")
    before = xds.status()["versions"]
    data = json.loads(xds.catalog.read_text())
    data["services"][3]["timeout_ms"] = 7000  # admin
    save_by_rename(xds.catalog, data)
    wait.wait_until(
        lambda: (
            http.get(envoy.url + "/orders/admin/1", tokens.bearer())
            .json()["headers"]
            .get("x-envoy-expected-rq-timeout-ms")
            == "7000"
        ),
        what="the new timeout in effect",
    )
    after = xds.status()["versions"]
    changed = {t.rsplit(".", 1)[-1] for t in before if before[t] != after[t]}
    assert changed == {"RouteConfiguration"}


@pytest.mark.parametrize("protocol", ["sotw"])
def test_a_catalog_directory_replaced_keeps_reaching_envoy_and_status_says_so(
    envoy: stack.Envoy, xds: stack.XdsServer, echo: Callable[[str], EchoServer]
) -> None:
    wait.wait_until(status_200(envoy, "/orders/1"), what="initial routing")
    directory = xds.catalog.parent
    with_reports = add_service(xds.catalog, "reports", echo("reports").port)
    # rm -rf dir; mkdir dir; write the file
    shutil.rmtree(directory)
    directory.mkdir()
    write_json(xds.catalog, with_reports)
    wait.wait_until(status_200(envoy, "/reports/1"), what="the catalog in the new directory")
    # The new directory is the one watched from now on.
    save_by_rename(xds.catalog, add_service(xds.catalog, "audit", echo("audit").port))
    wait.wait_until(status_200(envoy, "/audit/1"), what="an edit in the new directory")
    catalog = xds.status()["catalog"]
    assert catalog["valid"] and catalog["errors"] == []
    assert "watch_error" not in catalog
    assert "xds_catalog_watched 1.0" in xds.metrics()
