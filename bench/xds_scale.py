"""xDS at fleet scale: catalogs of 10 to 10,000 services, fleets of simulated ADS clients
(SotW and Delta) and real Envoys.

    python -m bench.xds_scale [--sizes 10,100,1000,10000] [--clients 100] [--envoys 3]
                              [--edits 5] [--fleet-size 1000] [--endpoints 5]
                              [--skip build,fleet,envoy,endpoints]

Four parts, each printing a table (targets beside the numbers, from issue #11):

1. build: per catalog size, `sidecar validate` and `sidecar render` as an operator runs them
   (wall time and peak memory of the process), the server's build of a new catalog from
   scratch and of a one-service edit (median; the ratio is incremental / from scratch, the
   baseline measured in the same run), the serialized size, and the server's RSS after loading
   it and after the edits.
2. fleet: an xDS server on a `--fleet-size` catalog and 1 or `--clients` simulated proxies
   (`tests.support.ads_client`), per protocol: a one-service edit saved → every client has
   ACKed the new version (median, p95, max over `--edits` edits; the 1-client row is the
   baseline for the ratio).
3. envoy: `--envoys` real Envoys per protocol on the largest catalog: the first full push
   ACKed, a one-service route edit and a cluster edit → every Envoy SYNCED, and Envoy's own
   time to apply the routes (its `rds.update_duration`, Delta only); then save → the first
   200 on a new route through one Envoy at `--fleet-size` services (p95 target 100 ms).

4. endpoints: a `--fleet-size` catalog with `--endpoints` endpoints per service (issue #28):
   the server's build from scratch beside the same catalog without endpoints (the ratio),
   a one-endpoint edit, `sidecar validate`, and serving: a real Envoy with ext_authz SYNCED
   on it, then one service's endpoint limit reaching 429 while its other paths answer 200.

The machine is shared and noisy: compare ratios and medians, and re-run on a quiet machine for
absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client as httplib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.echo import EchoServer
from tests.support import http, stack, tokens, wait
from tests.support.ads_client import AdsClient
from xds_server import typeurls
from xds_server.builder import SnapshotBuilder
from xds_server.translate import Options

PROTOCOLS = ("sotw", "delta")


def make_catalog(
    n: int, upstream_port: int = 8080, health_checks: bool = False, endpoints: int = 0
) -> dict[str, Any]:
    """`n` services with the fields a real catalog uses; active health checks only if asked
    (20,000 health-checked hosts that do not exist would measure Envoy's connect attempts);
    `endpoints` (up to 5) endpoints per service, one of each kind of override."""
    services = []
    for i in range(n):
        services.append(
            {
                **({"healthcheck_endpoint": "/healthz"} if health_checks else {}),
                "service_name": f"svc-{i:05d}",
                "base_path": f"/svc/{i:05d}",
                "internal_url": [
                    f"http://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:{upstream_port}",
                    f"http://10.{(i // 65536 + 100) % 256}.{i // 256 % 256}.{i % 256}:8080",
                ],
                "timeout_ms": 3000,
                "tenant_scope": "tenant" if i % 2 else "global",
                "cacheable": i % 6 == 0,  # a third of the global ones (never a tenant one)
                "retry_policy": {"max_retries": 2, "retry_on": ["5xx", "reset"]},
                "rate_limit": {"requests_per_minute": 600},
                **(
                    {"endpoints": service_endpoints(f"/svc/{i:05d}")[:endpoints]}
                    if endpoints
                    else {}
                ),
            }
        )
    return {"services": services, "roles": {"admin": ["*"], "reader": ["*:read"]}}


def service_endpoints(base: str) -> list[dict[str, Any]]:
    """Five endpoints of a service at `base`: a template with its own limit, an exact POST that
    reads, an admin-only prefix, one with its own timeout and no retries, a GET template."""
    return [
        {
            "name": "export",
            "path": f"{base}/{{id}}/export",
            "match": "template",
            "methods": ["POST"],
            "rate_limit": {"requests_per_minute": 5},
        },
        {
            "name": "search",
            "path": f"{base}/search",
            "match": "exact",
            "methods": ["POST"],
            "action": "read",
        },
        {"name": "admin", "path": f"{base}/admin", "roles": ["admin"]},
        {"name": "reports", "path": f"{base}/reports", "timeout_ms": 10_000, "retry_policy": None},
        {
            "name": "item",
            "path": f"{base}/{{id}}",
            "match": "template",
            "methods": ["GET"],
            "timeout_ms": 1_000,
        },
    ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def save(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def rss_mib(pid: int) -> tuple[float, float]:
    """(now, peak) resident memory of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


# Runs a command and prints its peak memory: a small parent, since a child forked from this
# process would count this process's memory as its own until it execs.
_PEAK = (
    "import os, subprocess, sys, time\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def run_cli(*args: str) -> tuple[float, float, int]:
    """A `sidecar` command: (seconds, peak MiB, exit status)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return time.perf_counter() - started, int(out[0]) / 1024, int(out[1])


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median milliseconds of `fn`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def edited(data: dict[str, Any], i: int, field: str = "timeout_ms") -> dict[str, Any]:
    """The catalog with service `i` edited (a route field by default)."""
    svc = data["services"][i % len(data["services"])]
    svc[field] = svc.get(field, 1000) + 1
    return data


def new_version(xds: stack.XdsServer, before: str | None) -> dict[str, str]:
    """Wait for the server to serve a version other than `before`; its versions by type."""
    status: dict[str, Any] = wait.wait_until(
        lambda: (s := xds.status())["version"] != before and s,
        timeout=60,
        interval=0.005,
        what="the edit served",
    )
    versions: dict[str, str] = status["versions"]
    return versions


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-xds-") as d:
        (Path(d) / "catalog").mkdir()
        yield Path(d)


@contextmanager
def serving(data: dict[str, Any]) -> Iterator[tuple[stack.XdsServer, Path]]:
    """An xDS server on `data` (loaded), and its working directory."""
    with workdir() as d:
        catalog = d / "catalog" / "service_catalog.json"
        catalog.write_text(json.dumps(data))
        xds = stack.start_xds(catalog, d)
        try:
            wait.wait_until(xds.version, timeout=120, what="the catalog loaded")
            yield xds, d
        finally:
            xds.proc.stop()


# 1. build ---------------------------------------------------------------------------------


@dataclass
class BuildRow:
    services: int
    validate_s: float
    validate_mib: float
    render_s: float
    render_mib: float
    scratch_ms: float
    edit_ms: float
    wire_kib: float
    rss_loaded: float
    rss_after: float
    rss_peak: float


def build_row(n: int, edits: int) -> BuildRow:
    data = make_catalog(n)
    raw = json.dumps(data).encode()
    runs = 3 if n >= 10_000 else 5
    scratch = timed(lambda: SnapshotBuilder(Options())(raw, "bench"), runs)
    builder = SnapshotBuilder(Options())
    snapshot, _ = builder(raw, "bench")
    wire = sum(len(r.packed.value) for by in snapshot.resources.values() for r in by.values())
    versions = [json.dumps(edited(data, 7 * k)).encode() for k in range(edits)]
    pending = iter(versions)
    edit = timed(lambda: builder(next(pending), "bench"), edits)
    with workdir() as d:
        catalog = d / "catalog" / "service_catalog.json"
        catalog.write_bytes(raw)
        validate_s, validate_mib, code = run_cli("validate", str(catalog))
        assert code == 0, "sidecar validate failed"
        render_s, render_mib, code = run_cli("render", str(catalog))
        assert code == 0, "sidecar render failed"
    with serving(data) as (xds, _):
        loaded, _ = rss_mib(xds.proc.popen.pid)
        for k in range(edits):
            before = xds.version()
            save(xds.catalog, edited(data, 11 * k + 3))
            new_version(xds, before)
        after, peak = rss_mib(xds.proc.popen.pid)
    return BuildRow(
        n,
        validate_s,
        validate_mib,
        render_s,
        render_mib,
        scratch,
        edit,
        wire / 1024,
        loaded,
        after,
        peak,
    )


def print_build(rows: list[BuildRow]) -> None:
    print("\n## build (catalog → snapshot), medians")
    print(
        f"{'services':>8} {'validate s':>10} {'MiB':>5} {'render s':>9} {'MiB':>5} "
        f"{'scratch ms':>10} {'1-edit ms':>9} {'ratio':>6} {'wire KiB':>9} "
        f"{'RSS MiB':>8} {'after':>6} {'peak':>6}"
    )
    for r in rows:
        print(
            f"{r.services:>8} {r.validate_s:>10.2f} {r.validate_mib:>5.0f} {r.render_s:>9.2f} "
            f"{r.render_mib:>5.0f} {r.scratch_ms:>10.1f} {r.edit_ms:>9.1f} "
            f"{r.edit_ms / r.scratch_ms:>6.2f} {r.wire_kib:>9.0f} {r.rss_loaded:>8.0f} "
            f"{r.rss_after:>6.0f} {r.rss_peak:>6.0f}"
        )


# 2. fleet ---------------------------------------------------------------------------------


async def fleet_latencies(
    xds: stack.XdsServer, data: dict[str, Any], protocol: str, clients: int, edits: int
) -> tuple[list[float], float]:
    """Per edit, ms from the save until every client ACKed the new routes; and the seconds
    until all had the first full push."""
    target = f"127.0.0.1:{xds.port}"
    fleet = [AdsClient(target, f"sim-{protocol}-{i}", protocol) for i in range(clients)]
    tasks = [asyncio.create_task(c.run()) for c in fleet]
    started = time.monotonic()
    try:
        versions = await asyncio.to_thread(lambda: xds.status()["versions"])
        await until(lambda: all(c.has(versions) for c in fleet), 300)
        first = time.monotonic() - started
        latencies = []
        for k in range(edits):
            before = await asyncio.to_thread(xds.version)
            saved = time.monotonic()
            await asyncio.to_thread(save, xds.catalog, edited(data, 13 * k + 5))
            versions = await asyncio.to_thread(new_version, xds, before)
            latencies.append((await acked_by_all(fleet, versions) - saved) * 1000)
        return latencies, first
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def acked_by_all(fleet: list[AdsClient], versions: dict[str, str]) -> float:
    """When the last client ACKed the routes of `versions` (the edit changes routes)."""
    route = versions[typeurls.ROUTE]
    await until(lambda: all(c.has({typeurls.ROUTE: route}) for c in fleet), 60)
    return max(c.seen[typeurls.ROUTE].acked_at[route] for c in fleet)


async def until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet did not converge")
        await asyncio.sleep(0.002)


def fleet_table(size: int, clients: int, edits: int) -> None:
    print(f"\n## fleet: one-service edit saved → every simulated client ACKed ({size} services)")
    print(
        f"{'protocol':>8} {'clients':>7} {'first push s':>12} {'median ms':>9} {'p95 ms':>7} "
        f"{'max ms':>7} {'ratio':>6} {'target':>8}"
    )
    data = make_catalog(size)
    for protocol in PROTOCOLS:
        baseline = None
        for count in (1, clients):
            with serving(data) as (xds, _):
                lat, first = asyncio.run(fleet_latencies(xds, data, protocol, count, edits))
            baseline = baseline or median(lat)
            target = "≤ 1000" if count == clients else ""
            print(
                f"{protocol:>8} {count:>7} {first:>12.2f} {median(lat):>9.1f} {p95(lat):>7.1f} "
                f"{max(lat):>7.1f} {median(lat) / baseline:>6.2f} {target:>8}"
            )


# 3. real Envoys ---------------------------------------------------------------------------


def envoy_rds_ms(envoy: stack.Envoy) -> str:
    stats = envoy.admin("/stats?filter=rds.ingress_routes.update_duration").body.decode()
    _, _, values = stats.partition(": ")
    p50 = values.split("P50(", 1)[1].split(",", 1)[0] if "P50(" in values else "nan"
    # Envoy prints its histogram's interpolated quantiles with float noise (495.00000000000006).
    return "n/a" if p50 == "nan" else f"{float(p50):.0f}"


def envoy_run(
    protocol: str, data: dict[str, Any], envoys: int, edits: int
) -> tuple[float, dict[str, list[float]], str]:
    """First full push (s); per edited field, ms to every Envoy SYNCED; Envoy's RDS time."""
    with serving(data) as (xds, d):
        started = time.monotonic()
        fleet = [
            stack.start_envoy(xds, d, node_id=f"edge-{i}", delta=protocol == "delta", wait=False)
            for i in range(envoys)
        ]
        try:

            def all_synced() -> bool:
                return all(xds.synced(e.node_id) for e in fleet)

            wait.wait_until(all_synced, timeout=300, interval=0.1, what="the first push")
            first = time.monotonic() - started
            results: dict[str, list[float]] = {}
            for field in ("timeout_ms", "connect_timeout_ms"):
                times = results.setdefault(field, [])
                for k in range(edits):
                    before = xds.version()
                    saved = time.monotonic()
                    save(xds.catalog, edited(data, 17 * k + 1, field))
                    new_version(xds, before)
                    wait.wait_until(all_synced, timeout=60, interval=0.005, what="SYNCED")
                    times.append((time.monotonic() - saved) * 1000)
            return first, results, envoy_rds_ms(fleet[0])
        finally:
            for e in fleet:
                e.proc.stop()


def envoy_table(size: int, envoys: int, edits: int) -> None:
    print(f"\n## {envoys} real Envoys, {size} services: edit saved → every Envoy SYNCED")
    print(
        f"{'protocol':>8} {'first push s':>12} {'route edit ms':>13} {'p95':>6} "
        f"{'cluster edit ms':>15} {'p95':>6} {'Envoy RDS ms':>12} {'target':>8}"
    )
    data = make_catalog(size)
    for protocol in PROTOCOLS:
        first, results, rds = envoy_run(protocol, data, envoys, edits)
        routes, clusters = results["timeout_ms"], results["connect_timeout_ms"]
        print(
            f"{protocol:>8} {first:>12.2f} {median(routes):>13.0f} {p95(routes):>6.0f} "
            f"{median(clusters):>15.0f} {p95(clusters):>6.0f} {rds:>12} {'≤ 100':>8}"
        )


def new_route_run(protocol: str, size: int, port: int, edits: int) -> list[float]:
    data = make_catalog(size, upstream_port=port)
    with serving(data) as (xds, d):
        envoy = stack.start_envoy(xds, d, delta=protocol == "delta", wait=False)
        try:
            node = envoy.node_id
            wait.wait_until(lambda: xds.synced(node), timeout=300, interval=0.1)
            return [first_200(envoy, xds.catalog, data, port, k) for k in range(edits)]
        finally:
            envoy.proc.stop()


def new_route_table(size: int, edits: int) -> None:
    print(f"\n## save → first 200 on a new route, one Envoy, {size} services")
    print(f"{'protocol':>8} {'median ms':>9} {'p95 ms':>7} {'max ms':>7} {'target p95':>10}")
    upstream = EchoServer("bench").start()
    try:
        for protocol in PROTOCOLS:
            times = new_route_run(protocol, size, upstream.port, edits)
            print(
                f"{protocol:>8} {median(times):>9.1f} {p95(times):>7.1f} {max(times):>7.1f} "
                f"{'≤ 100':>10}"
            )
    finally:
        upstream.stop()


def first_200(envoy: stack.Envoy, catalog: Path, data: dict[str, Any], port: int, k: int) -> float:
    name = f"new-{k}"
    data["services"].append(
        {
            "service_name": name,
            "base_path": f"/{name}",
            "internal_url": f"http://127.0.0.1:{port}",
            "public": True,
        }
    )
    conn = httplib.HTTPConnection("127.0.0.1", envoy.listener_port, timeout=2)
    saved = time.perf_counter()
    save(catalog, data)
    deadline = saved + 30
    try:
        while time.perf_counter() < deadline:
            conn.request("GET", f"/{name}/x")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return (time.perf_counter() - saved) * 1000
        raise TimeoutError(f"no 200 on /{name} within 30 s")
    finally:
        conn.close()


# 4. endpoints ------------------------------------------------------------------------------


def endpoints_table(size: int, per_service: int, edits: int) -> None:
    print(f"\n## {size} services with {per_service} endpoints each")
    plain = json.dumps(make_catalog(size)).encode()
    data = make_catalog(size, endpoints=per_service)
    raw = json.dumps(data).encode()
    base = timed(lambda: SnapshotBuilder(Options())(plain, "bench"), 3)
    scratch = timed(lambda: SnapshotBuilder(Options())(raw, "bench"), 3)
    builder = SnapshotBuilder(Options())
    snapshot, _ = builder(raw, "bench")
    (config,) = snapshot.resources[typeurls.ROUTE].values()
    routes = len(config.message.virtual_hosts[0].routes)

    def one_endpoint_edit(k: int) -> bytes:
        svc = data["services"][(13 * k + 5) % size]
        svc["endpoints"][-1]["timeout_ms"] += 1
        return json.dumps(data).encode()

    pending = iter([one_endpoint_edit(k) for k in range(edits)])
    edit = timed(lambda: builder(next(pending), "bench"), edits)
    with workdir() as d:
        catalog = d / "catalog" / "service_catalog.json"
        catalog.write_bytes(raw)
        validate_s, _, code = run_cli("validate", str(catalog))
        assert code == 0, "sidecar validate failed"
    print(
        f"{'no endpoints ms':>15} {'build ms':>9} {'ratio':>6} {'edit ms':>8} {'routes':>7} "
        f"{'validate s':>10}"
    )
    print(
        f"{base:>15.0f} {scratch:>9.0f} {scratch / base:>6.2f} {edit:>8.0f} {routes:>7} "
        f"{validate_s:>10.2f}"
    )
    first, statuses = endpoints_served(data)
    print(f"served: a real Envoy with ext_authz SYNCED in {first:.2f} s; {statuses}")


def endpoints_served(data: dict[str, Any]) -> tuple[float, str]:
    """Seconds to a real Envoy (with ext_authz) SYNCED on `data`, and what one service answers:
    its export endpoint's limit (5 a minute) reached while its other paths still answer."""
    upstream = EchoServer("bench").start()
    data["services"][1]["internal_url"] = f"http://127.0.0.1:{upstream.port}"
    try:
        with serving(data) as (xds, d):
            authz = stack.start_authz(d)
            started = time.monotonic()
            envoy = stack.start_envoy(xds, d, authz=authz, wait=False)
            try:
                wait.wait_until(lambda: xds.synced(envoy.node_id), timeout=300, interval=0.1)
                first = time.monotonic() - started
                admin = tokens.bearer(sub="bench", roles=["admin"])
                reader = tokens.bearer(sub="bench-reader", roles=["reader"])
                base = envoy.url + "/svc/00001"
                exports = [http.http("POST", f"{base}/7/export", admin).status for _ in range(6)]
                rest = http.http("POST", f"{base}/7", admin).status
                denied = http.http("GET", f"{base}/admin/x", reader).status
                allowed = http.http("GET", f"{base}/7", reader).status
                return first, (
                    f"POST export x6 {exports}, POST /7 {rest}, reader GET admin {denied}, "
                    f"reader GET /7 {allowed}"
                )
            finally:
                envoy.proc.stop()
                authz.proc.stop()
    finally:
        upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--envoys", type=int, default=3)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--fleet-size", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=5, help="per service, in part 4")
    parser.add_argument("--skip", default="", help="parts to skip: build, fleet, envoy, endpoints")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(args.skip.split(",")) - {""}
    rows: list[BuildRow] = []
    if "build" not in skip:
        rows = [build_row(n, args.edits) for n in sizes]
        print_build(rows)
    if "fleet" not in skip:
        fleet_table(args.fleet_size, args.clients, args.edits)
    if "envoy" not in skip:
        envoy_table(max(sizes), args.envoys, args.edits)
        new_route_table(args.fleet_size, max(args.edits, 10))
    if "endpoints" not in skip:
        endpoints_table(args.fleet_size, args.endpoints, args.edits)
    if rows and rows[-1].services == 10_000:
        r = rows[-1]
        print("\n## 10,000 services against the issue's targets")
        print(f"{'step':<40} {'now':>14} {'target':>10}")
        print(f"{'sidecar validate':<40} {f'{r.validate_s:.2f} s':>14} {'≤ 0.5 s':>10}")
        scratch, edit = f"{r.scratch_ms:.0f} ms", f"{r.edit_ms:.0f} ms"
        rss = f"{r.rss_after:.0f} ({r.rss_peak:.0f}) MiB"
        print(f"{'server build of a new catalog':<40} {scratch:>14} {'≤ 500 ms':>10}")
        print(f"{'one-service edit, incremental build':<40} {edit:>14} {'':>10}")
        print(f"{'sidecar render':<40} {f'{r.render_s:.2f} s':>14} {'≤ 1 s':>10}")
        print(f"{'server RSS (peak)':<40} {rss:>14} {'≤ 300 MiB':>10}")
        print("(edit → Envoy SYNCED and the first full push: the real-Envoy table above)")


if __name__ == "__main__":
    main()
