"""Failover between regions through a real Envoy: a region keeps its traffic while at least half
of its endpoints are healthy (the catalog's `overprovisioning_factor`, 200 by default), and a
primary that hangs rather than dies costs each request one per-try timeout, not `timeout_ms`,
and is ejected about a second after it stops answering."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

from tests.support import envoy_upstream, stack, wait
from tests.support.gateway import Gateway, gateway, public
from tests.support.upstreams import HEALTH_PATH, running

CHECK = {"interval_ms": 100, "timeout_ms": 100, "unhealthy_threshold": 1, "healthy_threshold": 1}


def statuses(gw: Gateway, n: int) -> list[int]:
    return [gw.request("GET", "/svc/x").status for _ in range(n)]


def test_a_region_with_half_its_endpoints_healthy_keeps_all_its_traffic(tmp_path: Path) -> None:
    with running("eu1", "eu2", "us") as (eu1, eu2, us):
        endpoints = [
            {"url": eu1.url, "region": "eu"},
            {"url": eu2.url, "region": "eu"},
            {"url": us.url, "region": "us"},
        ]
        svc = public("svc", endpoints, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK)
        with gateway(tmp_path, [svc], xds_args=["--region", "eu,us"]) as gw:
            eu2.set_healthy(False)
            wait.wait_until(lambda: gw.unhealthy("svc") == {eu2.port}, what="eu2 unhealthy")
            wait.wait_until(lambda: gw.avoids(eu2, "/svc/x"), what="traffic off eu2")
            for u in (eu1, us):
                u.forget()
            assert statuses(gw, 40) == [200] * 40
            # Envoy's own factor (140) would send 30 % of it to us.
            assert (eu1.count(), us.count()) == (40, 0)


def test_a_region_below_half_healthy_spills_in_proportion(tmp_path: Path) -> None:
    with running("eu1", "eu2", "eu3", "us") as (eu1, eu2, eu3, us):
        endpoints = [{"url": u.url, "region": "eu"} for u in (eu1, eu2, eu3)]
        endpoints.append({"url": us.url, "region": "us"})
        svc = public("svc", endpoints, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK)
        with gateway(tmp_path, [svc], xds_args=["--region", "eu,us"]) as gw:
            for u in (eu2, eu3):
                u.set_healthy(False)
            down = {eu2.port, eu3.port}
            wait.wait_until(lambda: gw.unhealthy("svc") == down, what="eu2 and eu3 unhealthy")
            wait.wait_until(lambda: gw.avoids(eu3, "/svc/x"), what="traffic off eu3")
            for u in (eu1, us):
                u.forget()
            assert statuses(gw, 200) == [200] * 200
            # eu keeps a third healthy x 200 % = 67 % of the traffic (133 of 200, give or take
            # three standard deviations; Envoy's 140 would keep 47 %, 93); us takes the rest.
            assert 113 <= eu1.count() <= 153, (eu1.count(), us.count())
            assert eu1.count() + us.count() == 200


def test_a_hung_primary_costs_a_per_try_timeout_and_is_ejected_in_about_a_second(
    tmp_path: Path,
) -> None:
    # The primary region's only endpoint is its own process (a direct-response Envoy), stopped
    # with SIGSTOP: connections stay open, nothing is answered.
    primary, port = envoy_upstream.start(tmp_path)
    with stack.stopping(primary), running("us") as (us,):
        endpoints = [
            {"url": f"http://127.0.0.1:{port}", "region": "eu"},
            {"url": us.url, "region": "us"},
        ]
        # timeout_ms 2000 and the default retry policy (one retry): 1 s per attempt.
        svc = public("svc", endpoints, timeout_ms=2000)
        with gateway(tmp_path, [svc], xds_args=["--region", "eu,us"]) as gw:
            assert statuses(gw, 5) == [200] * 5
            assert us.count() == 0
            os.kill(primary.popen.pid, signal.SIGSTOP)
            try:
                stopped = time.monotonic()

                def timed(_: int) -> tuple[int, float]:
                    resp, took = gw.timed("GET", "/svc/x")
                    return resp.status, took

                # Three at once: the default consecutive_local_origin_failure, and as many retries
                # as the default circuit_breaker.max_retries lets run at once.
                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    answers = list(pool.map(timed, range(3)))
                # Each one answered by us after its attempt on the primary ran out (1 s), well
                # before the whole timeout (2 s, which would have answered 504).
                assert [status for status, _ in answers] == [200] * 3, answers
                assert all(took < 1.8 for _, took in answers), answers
                wait.wait_until(
                    lambda: gw.ejected("svc") == {port}, timeout=5, what="the primary ejected"
                )
                assert time.monotonic() - stopped < 3.0
                # Ejected: every request goes straight to us.
                for _ in range(5):
                    resp, took = gw.timed("GET", "/svc/x")
                    assert resp.status == 200
                    assert took < 0.5, took
            finally:
                os.kill(primary.popen.pid, signal.SIGCONT)
