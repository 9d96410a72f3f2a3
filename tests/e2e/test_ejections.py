"""An ejection stands for its time, and an endpoint that fails among healthy ones costs an
idempotent request nothing, through a real Envoy with the catalog's defaults: a retry goes to
another endpoint, a passing health check does not re-admit an endpoint outlier detection
ejected."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import wait
from tests.support.gateway import gateway, public
from tests.support.upstreams import HEALTH_PATH, running

# Checks every 150 ms (the default 5 s would make the test take minutes); ejected after three
# 5xx in a row, for a minute: far longer than the test runs.
CHECK = {"interval_ms": 150, "timeout_ms": 100}
OUTLIER = {"consecutive_5xx": 3, "interval_ms": 100, "base_ejection_time_ms": 60_000}


def test_a_passing_health_check_does_not_cancel_an_ejection(tmp_path: Path) -> None:
    with running("good", "bad") as (good, bad):
        svc = public(
            "svc",
            [good.url, bad.url],
            healthcheck_endpoint=HEALTH_PATH,
            health_check=CHECK,
            outlier_detection=OUTLIER,
        )
        with gateway(tmp_path, [svc]) as gw:
            # A shallow /healthz: it passes while every request fails.
            bad.behave("fail")

            def ejected() -> bool:
                gw.request("GET", "/svc/x")
                return gw.ejected("svc") == {bad.port}

            wait.wait_until(ejected, what="the bad one ejected")
            bad.forget()
            since = time.monotonic()
            # Two seconds of traffic: a dozen passing checks in that time.
            statuses = []
            while time.monotonic() - since < 2.0:
                statuses.append(gw.request("GET", "/svc/x").status)
            checks = bad.health_checks(since)
            assert len(checks) >= 6, checks
            assert set(checks) == {200}
            # Still ejected; no request reached it; every client got its answer.
            assert gw.ejected("svc") == {bad.port}
            assert bad.count() == 0, bad.count()
            assert set(statuses) == {200}, statuses


def test_an_endpoint_failing_among_healthy_ones_costs_get_requests_nothing(
    tmp_path: Path,
) -> None:
    # Catalog defaults only: one retry on another endpoint, outlier detection.
    with running("a", "b", "bad") as (a, b, bad):
        svc = public("svc", [a.url, b.url, bad.url])
        with gateway(tmp_path, [svc]) as gw:
            bad.behave("fail")
            statuses = [gw.request("GET", f"/svc/items/{n}").status for n in range(60)]
            assert statuses == [200] * 60, statuses
            # It was tried (and failed) before outlier detection took it out.
            assert bad.count() >= 1
