"""What safe retries cost per request: on a service whose retry conditions depend on the method,
a small filter adds the idempotent-only conditions to each GET (`xds_server/resources/retries.py`).

    python -m bench.route_split [--services 1000] [--runs 3] [--duration 5]

Two Envoys (one worker each) with the same catalog of public services, all with `retry_on:
["5xx"]`; the baseline sets `retry_non_idempotent` (every condition on the route, no filter),
the other does not. wrk sends GETs to the service matched last, so Envoy walks every route before
it. Both are measured in the same run, interleaved; prints medians and the ratio. Also times
building the snapshot of each catalog. (An earlier design gave such services a second route
matched on `:method`: 0.32 of the baseline at 1,000 services, since Envoy evaluates a route's
header matchers before its path on every route it walks past.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.check_throughput import WrkResult, parse_wrk
from sidecar import commands
from sidecar_shared.supervise import find_envoy
from tests.support import envoy_upstream, http, ports, stack, wait
from tests.support.envoy import static_bootstrap
from tests.support.translation import build_snapshot
from xds_server.catalog import parse_catalog
from xds_server.translate import Options


def catalog(n: int, upstream_port: int, opt_in: bool) -> dict[str, Any]:
    retry = {"max_retries": 2, "retry_on": ["5xx"], "retry_non_idempotent": opt_in}
    return {
        "services": [
            {
                "service_name": f"svc-{i:05d}",
                "base_path": f"/svc/{i:05d}",
                "internal_url": f"http://127.0.0.1:{upstream_port}",
                "public": True,
                "rbac_required": False,
                "retry_policy": retry,
            }
            for i in range(n)
        ]
    }


def build_ms(data: dict[str, Any], options: Options) -> float:
    start = time.perf_counter()
    build_snapshot(parse_catalog(data), options)
    return (time.perf_counter() - start) * 1000


def start_envoy(data: dict[str, Any], workdir: Path, name: str) -> tuple[stack.Proc, int]:
    port, admin = ports.free_port(), ports.free_port()
    snapshot = build_snapshot(
        parse_catalog(data), Options(listener_address="127.0.0.1", listener_port=port)
    )
    config = workdir / f"{name}.json"
    config.write_text(json.dumps(static_bootstrap(snapshot, admin_port=admin)))
    argv = [*commands.envoy(find_envoy(), config, "error"), "--concurrency", "1"]
    proc = stack.start(name, argv, workdir)
    wait.wait_until(
        lambda: (
            (r := http.try_get(f"http://127.0.0.1:{port}/svc/00000/x")) is not None
            and r.status == 200
        ),
        timeout=60,
        what=f"{name} answering",
    )
    return proc, port


def wrk(url: str, seconds: float) -> WrkResult:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    return parse_wrk(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        procs: list[stack.Proc] = []
        try:
            upstream, upstream_port = envoy_upstream.start(workdir)
            procs.append(upstream)
            configs = {
                "opted in (baseline)": catalog(args.services, upstream_port, True),
                "by method (retry filter)": catalog(args.services, upstream_port, False),
            }
            builds = {
                name: statistics.median(build_ms(data, Options()) for _ in range(args.runs))
                for name, data in configs.items()
            }
            urls = {}
            for i, (name, data) in enumerate(configs.items()):
                proc, port = start_envoy(data, workdir, f"envoy{i}")
                procs.append(proc)
                urls[name] = f"http://127.0.0.1:{port}/svc/{args.services - 1:05d}/x"
            results: dict[str, list[WrkResult]] = {name: [] for name in configs}
            for _ in range(args.runs):
                for name, url in urls.items():
                    results[name].append(wrk(url, args.duration))
        finally:
            for p in procs:
                p.stop()
    base = statistics.median(r.rps for r in results[next(iter(results))])
    print(f"{args.services} services, GET to the last route, {args.runs} runs x {args.duration}s")
    row = "{:<32} {:>9} {:>6} {:>7} {:>7} {:>9}"
    print(row.format("configuration", "req/s", "ratio", "p50 ms", "p99 ms", "build ms"))
    for name, runs in results.items():
        rps = statistics.median(r.rps for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        numbers = (f"{rps:.0f}", f"{rps / base:.2f}", f"{p50:.2f}", f"{p99:.2f}")
        print(row.format(name, *numbers, f"{builds[name]:.0f}"))


if __name__ == "__main__":
    main()
