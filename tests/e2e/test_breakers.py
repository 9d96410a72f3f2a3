"""Circuit-breaker thresholds from the catalog, through a real Envoy: what overflows is answered
503 at once with Envoy's overflow mark (`x-envoy-overloaded`), and the upstream never sees more
at once than the thresholds allow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import WORKERS, gateway, public
from tests.support.upstreams import running


@pytest.mark.parametrize(
    ("breaker", "at_once", "counter"),
    [
        # Envoy lets each worker's pool open one connection whatever the limit.
        (
            {"max_connections": 1, "max_pending_requests": 1},
            WORKERS,
            "upstream_rq_pending_overflow",
        ),
        ({"max_requests": 2}, 2, "upstream_rq_active_overflow"),
    ],
    ids=["connections-and-pending", "requests"],
)
def test_overflow_is_503_with_envoys_overflow_mark(
    tmp_path: Path, breaker: dict[str, Any], at_once: int, counter: str
) -> None:
    with running("a") as (up,):
        svc = public("svc", up.url, timeout_ms=5000, circuit_breaker=breaker)
        with gateway(tmp_path, [svc]) as gw:
            up.behave("slow", delay_s=0.5)
            responses = gw.at_once(8, "GET", "/svc/busy")
            overflowed = [r for r in responses if r.status == 503]
            assert len(overflowed) >= 3, [r.status for r in responses]
            assert all(r.headers.get("x-envoy-overloaded") == "true" for r in overflowed)
            assert {r.status for r in responses} <= {200, 503}
            assert up.max_active <= at_once
            stat = f"cluster.svc.{counter}"
            assert gw.stats(stat)[stat] == len(overflowed)
