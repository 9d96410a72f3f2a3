"""Several endpoints per service through a real Envoy: traffic follows their weights; with
regions, the local region is preferred, the next one in the failover order takes over when it is
unhealthy, and traffic comes back when it recovers."""

from __future__ import annotations

from pathlib import Path

from tests.support import wait
from tests.support.gateway import Gateway, gateway, public
from tests.support.upstreams import HEALTH_PATH, Upstream, running

CHECK = {"interval_ms": 100, "timeout_ms": 100, "unhealthy_threshold": 1, "healthy_threshold": 1}


def send(gw: Gateway, n: int) -> None:
    for _ in range(n):
        assert gw.request("GET", "/svc/x").status == 200


def test_traffic_follows_the_endpoint_weights(tmp_path: Path) -> None:
    with running("heavy", "light", "drained") as (heavy, light, drained):
        endpoints = [
            {"url": heavy.url, "weight": 3},
            {"url": light.url, "weight": 1},
            {"url": drained.url, "weight": 0},
        ]
        with gateway(tmp_path, [public("svc", endpoints)]) as gw:
            send(gw, 80)
    # Weighted round robin on each of Envoy's workers: 3 to 1 (60), give or take a few.
    assert 52 <= heavy.count() <= 68, (heavy.count(), light.count())
    assert heavy.count() + light.count() == 80
    assert drained.count() == 0


def regional(urls: dict[str, Upstream]) -> dict[str, object]:
    endpoints = [{"url": up.url, "region": region} for region, up in urls.items()]
    return public("svc", endpoints, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK)


def test_the_local_region_is_preferred_and_fails_over_in_order(tmp_path: Path) -> None:
    with running("eu", "us", "ap") as (eu, us, ap):
        svc = regional({"ap": ap, "us": us, "eu": eu})
        with gateway(tmp_path, [svc], xds_args=["--region", "eu,us"]) as gw:
            send(gw, 10)
            assert (eu.count(), us.count(), ap.count()) == (10, 0, 0)

            eu.set_healthy(False)
            wait.wait_until(lambda: gw.avoids(eu, "/svc/x"), what="traffic off eu")
            # The next region in the order took it all, not any other.
            assert us.count() >= 10
            assert ap.count() == 0

            eu.set_healthy(True)
            wait.wait_until(lambda: gw.avoids(us, "/svc/x"), what="traffic back on eu")
            assert ap.count() == 0


def test_without_a_region_preference_every_region_serves(tmp_path: Path) -> None:
    with running("eu", "us") as (eu, us), gateway(tmp_path, [regional({"eu": eu, "us": us})]) as gw:
        send(gw, 20)
        assert eu.count() > 0 and us.count() > 0
