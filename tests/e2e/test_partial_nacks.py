"""What a proxy runs after it rejects part of a version, through real Envoys: one from
`sidecar bootstrap`, one from the same bootstrap without `bootstrap_extensions` (it accepts the
main listener with a cache filter and rejects the side listener the cache fetches through).
Envoy applies what passes of a rejected response: the server puts back what the proxy had, so
it keeps answering; its status says what it runs; and a rejection outlives a restart."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import http, ports, stack, tokens, wait

REQUESTS = 20


def no_extensions(bootstrap: dict[str, Any]) -> None:
    bootstrap.pop("bootstrap_extensions", None)


def make_cacheable(catalog: Path, cacheable: bool = True) -> None:
    """The sample's `catalog` service cacheable or not (the only one that may be)."""
    data = json.loads(catalog.read_text())
    for svc in data["services"]:
        if svc["service_name"] == "catalog":
            svc["cacheable"] = cacheable
    tmp = catalog.with_name("next.json")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, catalog)


def failures(envoy: stack.Envoy) -> list[int]:
    """The statuses other than 200 of `REQUESTS` GETs of the catalog service through `envoy`."""
    out = []
    for i in range(REQUESTS):
        resp = http.try_get(f"{envoy.url}/catalog/item-{i}", tokens.bearer())
        status = resp.status if resp is not None else 0
        if status != 200:
            out.append(status)
    return out


def ok(envoy: stack.Envoy) -> bool:
    resp = http.try_get(f"{envoy.url}/catalog/probe", tokens.bearer())
    return resp is not None and resp.status == 200


def proxy(xds: stack.XdsServer, node_id: str) -> dict[str, Any] | None:
    return next((p for p in xds.status()["proxies"] if p["node_id"] == node_id), None)


def listeners(xds: stack.XdsServer, node_id: str) -> dict[str, Any] | None:
    found = proxy(xds, node_id)
    return found["types"].get("listeners") if found else None


def ingress_version(envoy: stack.Envoy) -> str | None:
    """The version of the response that last set Envoy's main listener."""
    for section in envoy.config_dump()["configs"]:
        if section["@type"].endswith("ListenersConfigDump"):
            for lst in section.get("dynamic_listeners", []):
                if lst["name"] == "ingress_http":
                    version: str | None = lst.get("active_state", {}).get("version_info")
                    return version
    return None


def synced(xds: stack.XdsServer, *envoys: stack.Envoy) -> bool:
    status = xds.status()
    proxies = {p["node_id"]: p for p in status["proxies"]}
    return all(
        e.node_id in proxies
        and len(proxies[e.node_id]["types"]) == 4
        and all(t["state"] == "SYNCED" for t in proxies[e.node_id]["types"].values())
        for e in envoys
    )


@pytest.fixture
def uncached(sample_catalog: Path) -> Path:
    """The sample catalog with no cacheable service: what both Envoys accept."""
    make_cacheable(sample_catalog, False)
    return sample_catalog


@pytest.fixture
def plain_xds(uncached: Path, tmp_path: Path) -> Iterator[stack.XdsServer]:
    """The xDS server with its defaults: without mTLS no NACK vetoes a version."""
    server = stack.start_xds(uncached, tmp_path)
    yield server
    server.proc.stop()


@pytest.fixture
def veto_xds(uncached: Path, tmp_path: Path) -> Iterator[stack.XdsServer]:
    """The xDS server whose proxies may veto a version (`VETO_UNAUTHENTICATED`)."""
    server = stack.start_xds(uncached, tmp_path, args=stack.VETO_UNAUTHENTICATED)
    yield server
    server.proc.stop()


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_proxy_that_rejects_part_of_a_version_keeps_answering_on_what_it_had(
    plain_xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path, protocol: str
) -> None:
    xds, delta = plain_xds, protocol == "delta"
    full = stack.start_envoy(xds, tmp_path, node_id="edge-full", authz=authz, delta=delta)
    bare = stack.start_envoy(
        xds, tmp_path, node_id="edge-bare", authz=authz, delta=delta, edit=no_extensions
    )
    try:
        try:
            wait.wait_until(lambda: synced(xds, full, bare), timeout=30, what="both SYNCED")
        except AssertionError:
            print(json.dumps(xds.status(), indent=1))
            print(xds.proc.output()[-3000:])
            raise
        before = listeners(xds, "edge-bare")
        assert before is not None and failures(bare) == []
        make_cacheable(xds.catalog)
        # The bare Envoy rejects the side listener; the full one takes the version.
        wait.wait_until(lambda: synced(xds, full), timeout=30, what="the full Envoy SYNCED")
        after = wait.wait_until(
            lambda: (t := listeners(xds, "edge-bare")) and t.get("nacked_version") and t,
            timeout=30,
            what="the bare Envoy's NACK",
        )
        assert "internal" in after["error"].lower() or "side" in after["error"], after
        # It is put back on the listeners it had: it runs them, and its status says so.
        assert after["acked_version"] == before["acked_version"]
        assert after["state"] == "NACKED" and not after.get("partially_applied"), after
        # Once what it had is back (at once: no wait for another edit), it answers every time.
        wait.wait_until(
            lambda: http.try_get(f"{bare.url}/catalog/first", tokens.bearer()) or None,
            what="an answer",
        )
        wait.wait_until(lambda: ok(bare), timeout=15, what="the bare Envoy answering 200")
        assert failures(bare) == []
        assert failures(full) == []
        if not delta:
            # The response that last set the main listener is the one that put it back.
            assert ingress_version(bare) == before["acked_version"]
        shown = xds.status_command()
        assert "NACKED" in shown.stdout and "PARTIAL" not in shown.stdout, shown.stdout
    finally:
        full.proc.stop()
        bare.proc.stop()


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_a_rejected_version_is_not_served_again_after_a_restart(
    veto_xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path, protocol: str
) -> None:
    """The state directory is the stack's default, in `tmp_path`, kept across the restart."""
    xds = veto_xds
    bare = stack.start_envoy(
        xds,
        tmp_path,
        node_id="edge-bare",
        authz=authz,
        delta=protocol == "delta",
        edit=no_extensions,
    )
    try:
        wait.wait_until(lambda: synced(xds, bare), timeout=30, what="SYNCED")
        good = xds.status()["version"]
        make_cacheable(xds.catalog)
        (rejected,) = wait.wait_until(lambda: xds.status()["rejected"], what="the rejection")
        assert rejected["rolled_back_to"] == good
        wait.wait_until(lambda: synced(xds, bare), timeout=30, what="SYNCED on the good one")
        xds.proc.stop()
        again = stack.start_xds(
            xds.catalog,
            tmp_path,
            ports=(xds.port, xds.http_port, xds.listener_port),
            args=stack.VETO_UNAUTHENTICATED,
        )
        try:
            status = wait.wait_until(
                lambda: (s := again.status())["catalog"]["checked_at"] and s["version"] and s,
                what="the catalog loaded",
            )
            # The catalog on disk is the rejected version: the last accepted one is served.
            assert status["version"] == good, status
            assert status["catalog"]["valid"] is False
            assert f"version {rejected['version']} was rejected" in status["catalog"]["errors"][0]
            assert [r["version"] for r in status["rejected"]] == [rejected["version"]]
            wait.wait_until(lambda: synced(again, bare), timeout=30, what="back and SYNCED")
            assert failures(bare) == []
        finally:
            again.proc.stop()
    finally:
        bare.proc.stop()


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_when_nothing_can_be_put_back_the_status_says_what_the_proxy_may_run(
    sample_catalog: Path, authz: stack.Authz, tmp_path: Path, protocol: str
) -> None:
    """No state directory, and the first listeners an Envoy is sent are the ones it rejects in
    part (the sample has a cacheable service): it had nothing to put back."""
    xds = stack.start_xds(sample_catalog, tmp_path, env={"SIDECAR_STATE_DIR": ""})
    bare = stack.start_envoy(
        xds,
        tmp_path,
        node_id="edge-bare",
        authz=authz,
        delta=protocol == "delta",
        edit=no_extensions,
        wait=False,
    )
    try:
        shown = wait.wait_until(
            lambda: (t := listeners(xds, "edge-bare")) and t.get("partially_applied") and t,
            timeout=30,
            what="the partial NACK in the status",
        )
        assert shown["state"] == "NACKED" and shown["acked_version"] is None, shown
        text = xds.status_command().stdout
        assert "PARTIAL" in text, text
        assert not (tmp_path / "xds-state").exists()
    finally:
        bare.proc.stop()
        xds.proc.stop()


def test_envoys_own_error_on_a_cacheable_service_carries_the_json_body(
    sample_catalog: Path, xds: stack.XdsServer, envoy: stack.Envoy
) -> None:
    """The cache fetches through the side listener: its own 503 (an upstream that refuses
    connections) reaches the client as the fetch's answer, in our JSON shape too."""
    data = json.loads(sample_catalog.read_text())
    for svc in data["services"]:
        if svc["service_name"] == "catalog":
            assert svc["cacheable"] is True
            svc["internal_url"] = [f"http://127.0.0.1:{ports.free_port()}"]  # nothing listens
    tmp = sample_catalog.with_name("next.json")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, sample_catalog)

    def refused() -> http.Response | None:
        r = http.try_get(f"{envoy.url}/catalog/x", tokens.bearer())
        return r if r is not None and r.status == 503 else None

    resp = wait.wait_until(refused, timeout=30, what="a 503 from the cacheable service")
    body = json.loads(resp.body)
    assert set(body) == {"error", "message", "request_id"}, resp.body
    assert body["request_id"]
