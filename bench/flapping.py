"""What a flapping endpoint costs clients: one of three endpoints fails 2 s of every 4 (503 to
every request and to its health check), the other two are healthy.

    python -m bench.flapping [--runs 3] [--duration 24] [--clients 4]

Each configuration runs a real gateway (`tests.support.gateway`: xDS server and Envoy) for one
public service with `healthcheck_endpoint` and nothing else: the catalog's defaults. The
baseline spells the previous defaults the catalog can still say (`"retry_policy": null`,
`healthy_threshold` 1); the other leaves them to the catalog. Both are measured in the same
run, interleaved, each run starting in step with the flapping (its first failing phase 1 s in).
`--clients` threads send GETs back to back, each on a connection of its own. Prints per
configuration the success rate (median of runs, and over all requests), the failed requests,
the requests that reached the flapping endpoint while it failed, and the ratio of failure rates.
Target: at least 99.9 % success with the defaults.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import http
from tests.support.gateway import gateway, public
from tests.support.upstreams import HEALTH_PATH, Upstream, running

PERIOD_S = 4.0
FAILING_S = 2.0
TARGET = 99.9


@dataclass
class Run:
    ok: int
    failed: int
    hit_while_failing: int

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def success(self) -> float:
        return 100.0 * self.ok / self.total if self.total else 0.0


def service(urls: list[str], baseline: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"healthcheck_endpoint": HEALTH_PATH}
    if baseline:
        fields |= {"retry_policy": None, "health_check": {"healthy_threshold": 1}}
    return public("svc", urls, **fields)


def failing_at(elapsed: float) -> bool:
    """Whether the flapping endpoint fails `elapsed` seconds into a run: FAILING_S of every
    PERIOD_S, the first time 1 s in."""
    return elapsed >= 1.0 and (elapsed - 1.0) % PERIOD_S < FAILING_S


def flap(bad: Upstream, start: float, stop: threading.Event) -> None:
    failing = False
    while not stop.is_set():
        now = failing_at(time.monotonic() - start)
        if now != failing:
            bad.behave("fail" if now else "ok")
            bad.set_healthy(not now)
            failing = now
        stop.wait(0.01)


def measure(workdir: Path, baseline: bool, seconds: float, clients: int) -> Run:
    with running("a", "b", "flapping") as (a, b, bad):
        svc = service([a.url, b.url, bad.url], baseline)
        with gateway(workdir, [svc]) as gw:
            url = gw.url + "/svc/x"
            counts = {"ok": 0, "failed": 0}
            lock = threading.Lock()
            stop = threading.Event()
            start = time.monotonic()
            flapper = threading.Thread(target=flap, args=(bad, start, stop))
            flapper.start()

            def client() -> None:
                while time.monotonic() - start < seconds:
                    try:
                        status = http.get(url).status
                    except OSError:
                        status = 0
                    with lock:
                        counts["ok" if status == 200 else "failed"] += 1

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            stop.set()
            flapper.join()
            # Requests (health checks aside) that reached it while it failed.
            hit = sum(1 for seen in bad.seen() if failing_at(seen.at - start))
    return Run(counts["ok"], counts["failed"], hit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=24.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    configs = {"previous defaults (baseline)": True, "catalog defaults": False}
    results: dict[str, list[Run]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for j, (name, baseline) in enumerate(configs.items()):
                workdir = Path(tmp) / f"run{i}-{j}"
                workdir.mkdir()
                results[name].append(measure(workdir, baseline, args.duration, args.clients))
    print(
        f"one of three endpoints failing {FAILING_S:g} s of every {PERIOD_S:g} s; "
        f"{args.runs} runs x {args.duration:g} s, {args.clients} clients"
    )
    row = "{:<30} {:>10} {:>10} {:>9} {:>9} {:>12}"
    print(
        row.format("configuration", "success %", "overall %", "requests", "failed", "to flapping")
    )
    failure_rates = {}
    for name, runs in results.items():
        total = sum(r.total for r in runs)
        failed = sum(r.failed for r in runs)
        failure_rates[name] = failed / total if total else 0.0
        print(
            row.format(
                name,
                f"{statistics.median(r.success for r in runs):.3f}",
                f"{100.0 * (total - failed) / total:.3f}" if total else "-",
                total,
                failed,
                sum(r.hit_while_failing for r in runs),
            )
        )
    base, ours = failure_rates.values()
    ratio = f"{ours / base:.3f}" if base else "-"
    print(f"failure rate, defaults / baseline: {ratio}; target: success >= {TARGET} %")


if __name__ == "__main__":
    main()
