"""Active health checks on `healthcheck_endpoint`, through a real Envoy, with the catalog's
interval and thresholds: an endpoint that fails them leaves rotation and comes back when it
passes again; a service with no healthy endpoint answers 503 at once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support import wait
from tests.support.gateway import gateway, public
from tests.support.upstreams import HEALTH_PATH, running

# Checks every 150 ms; Envoy's and our default interval (5 s) would make these tests take
# minutes.
CHECK = {"interval_ms": 150, "timeout_ms": 100, "unhealthy_threshold": 5, "healthy_threshold": 3}


def checked(urls: list[str], **fields: Any) -> dict[str, Any]:
    return public("svc", urls, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK, **fields)


def test_an_unhealthy_endpoint_leaves_rotation_and_returns_when_healthy(tmp_path: Path) -> None:
    with running("a", "b") as (a, b), gateway(tmp_path, [checked([a.url, b.url])]) as gw:
        since = time.monotonic()
        a.set_healthy(False)
        wait.wait_until(lambda: gw.unhealthy("svc") == {a.port}, what="a marked unhealthy")
        # Not before the catalog's unhealthy_threshold of failed checks (our default is 3).
        assert a.health_checks(since).count(503) >= 5
        wait.wait_until(lambda: gw.avoids(a, "/svc/x"), what="traffic on b only")

        since = time.monotonic()
        a.set_healthy(True)
        wait.wait_until(lambda: not gw.unhealthy("svc"), what="a healthy again")
        assert a.health_checks(since).count(200) >= 3  # the healthy_threshold
        for _ in range(10):
            gw.request("GET", "/svc/x")
        assert a.count() > 0


def test_checks_run_at_the_catalogs_interval(tmp_path: Path) -> None:
    with running("a") as (a,), gateway(tmp_path, [checked([a.url])]):
        since = time.monotonic()
        wait.wait_until(lambda: len(a.health_checks(since)) >= 8, what="eight checks")
        # Eight checks at 150 ms take about a second: not faster than the interval allows.
        assert time.monotonic() - since >= 7 * 0.15 * 0.9


def test_a_health_check_slower_than_its_timeout_fails(tmp_path: Path) -> None:
    with running("a", "b") as (a, b), gateway(tmp_path, [checked([a.url, b.url])]) as gw:
        # 200, but after 400 ms: past the catalog's 100 ms (our default would wait 1 s).
        a.set_healthy(True, delay_s=0.4)
        wait.wait_until(lambda: gw.unhealthy("svc") == {a.port}, what="a timed out")
        a.set_healthy(True)
        wait.wait_until(lambda: not gw.unhealthy("svc"), what="a healthy again")


def test_a_service_with_no_healthy_endpoint_answers_503_at_once(tmp_path: Path) -> None:
    with running("a", "b") as ups, gateway(tmp_path, [checked([u.url for u in ups])]) as gw:
        for u in ups:
            u.set_healthy(False)
        ports = {u.port for u in ups}
        wait.wait_until(lambda: gw.unhealthy("svc") == ports, what="both unhealthy")
        wait.wait_until(lambda: gw.request("GET", "/svc/x").status == 503, what="a 503")
        for u in ups:
            u.forget()
        for _ in range(3):
            resp, took = gw.timed("GET", "/svc/x")
            assert resp.status == 503
            # Envoy's own reply, in our JSON shape (local_reply_config), not an upstream's.
            assert resp.json()["error"] == "unavailable"
            assert took < 2, took
        # The endpoints still answer requests, but Envoy sends them none.
        assert sum(u.count() for u in ups) == 0
