"""Time and memory to validate, translate and serialize catalogs of 1,000 and 10,000 services.

    python -m bench.build_snapshot [--runs 5]

Prints medians over the runs. The baseline in the same run is validation alone (pydantic), so the
ratio shows what translation and serialization add on this machine today.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench import xds_scale
from tests.support.translation import build_snapshot
from xds_server.catalog import parse_catalog
from xds_server.translate import Options


def make_catalog(n: int) -> dict[str, Any]:
    return xds_scale.make_catalog(n, health_checks=True)


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'services':>8} {'validate ms':>12} {'full ms':>9} {'ratio':>6} {'per svc µs':>11} "
        f"{'peak MiB':>9} {'wire KiB':>9}"
    )
    for n in (1_000, 10_000):
        data = json.loads(json.dumps(make_catalog(n)))
        catalog = parse_catalog(data)

        def validate_only(data: dict[str, Any] = data) -> object:
            return parse_catalog(data)

        def full(data: dict[str, Any] = data) -> object:
            return build_snapshot(parse_catalog(data), Options())

        base = median_ms(validate_only, args.runs)
        total = median_ms(full, args.runs)
        snap = build_snapshot(catalog, Options())
        wire = sum(
            len(r.packed.value) for by_name in snap.resources.values() for r in by_name.values()
        )
        print(
            f"{n:>8} {base:>12.1f} {total:>9.1f} {total / base:>6.2f} {total / n * 1000:>11.1f} "
            f"{peak_mib(full):>9.1f} {wire / 1024:>9.0f}"
        )


if __name__ == "__main__":
    main()
