"""Outlier detection through a real Envoy: an endpoint that keeps answering 5xx (or gateway
failures, counted on their own) leaves rotation after the catalog's number of errors, comes back
after the base ejection time, and no more than the catalog's share of endpoints is ever
ejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import wait
from tests.support.gateway import Gateway, gateway, public
from tests.support.upstreams import Upstream, running


def outlier(**fields: Any) -> dict[str, Any]:
    return {"consecutive_5xx": 2, "interval_ms": 100, "base_ejection_time_ms": 1500, **fields}


def statuses(gw: Gateway, n: int, path: str = "/svc/x") -> list[int]:
    return [gw.request("GET", path).status for _ in range(n)]


def assert_ejected_after_two_to_four(gw: Gateway, bad: Upstream) -> None:
    """Requests (round robin over two endpoints) until `bad` is ejected: it must be, having
    answered 2 to 4 of them (the catalog's 2 in a row, plus ejection reaching the workers)."""
    for _ in range(20):
        gw.request("GET", "/svc/x")
        if gw.ejected("svc") == {bad.port}:
            break
    assert gw.ejected("svc") == {bad.port}
    assert 2 <= bad.count() <= 4, bad.count()


def test_a_failing_endpoint_is_ejected_and_traffic_moves_to_the_healthy_one(
    tmp_path: Path,
) -> None:
    with running("good", "bad") as (good, bad):
        svc = public("svc", [good.url, bad.url], outlier_detection=outlier())
        with gateway(tmp_path, [svc]) as gw:
            bad.behave("fail")
            # Ejected after the catalog's two 5xx in a row (Envoy's own default is 5).
            assert_ejected_after_two_to_four(gw, bad)
            wait.wait_until(lambda: gw.avoids(bad, "/svc/x"), what="traffic on the good one only")


def test_an_ejected_endpoint_returns_after_the_base_ejection_time(tmp_path: Path) -> None:
    with running("good", "bad") as (good, bad):
        svc = public("svc", [good.url, bad.url], outlier_detection=outlier())
        with gateway(tmp_path, [svc]) as gw:
            bad.behave("fail")
            statuses(gw, 8)
            wait.wait_until(lambda: gw.ejected("svc") == {bad.port}, what="the bad one ejected")
            # Ejected after its last failure arrived: the clock starts no later than that.
            last_failure = bad.seen()[-1].at
            bad.behave("ok")
            bad.forget()

            def bad_serves_again() -> bool:
                gw.request("GET", "/svc/x")
                return bad.count() > 0

            wait.wait_until(bad_serves_again, timeout=15, what="the bad one back in rotation")
            back_after = bad.seen()[0].at - last_failure
            # Not before the base ejection time (1.5 s; Envoy's own default is 30 s).
            assert back_after >= 1.45, back_after
            assert gw.ejected("svc") == set()


@pytest.mark.parametrize(("percent", "ejected"), [(50, 1), (100, 2)])
def test_no_more_than_the_max_ejection_percent_is_ejected(
    tmp_path: Path, percent: int, ejected: int
) -> None:
    with running("a", "b") as ups:
        svc = public(
            "svc",
            [u.url for u in ups],
            outlier_detection=outlier(max_ejection_percent=percent, base_ejection_time_ms=60_000),
        )
        with gateway(tmp_path, [svc]) as gw:
            for u in ups:
                u.behave("fail")
            statuses(gw, 12)
            wait.wait_until(lambda: len(gw.ejected("svc")) == ejected, what=f"{ejected} ejected")
            statuses(gw, 8)
            assert len(gw.ejected("svc")) == ejected


@pytest.mark.parametrize("gateway_status", [502, 504])
def test_gateway_failures_eject_on_their_own_count(tmp_path: Path, gateway_status: int) -> None:
    # consecutive_5xx is out of reach, so only the gateway-failure rule can eject (Envoy enforces
    # it at 0 % unless told otherwise).
    with running("good", "bad") as (good, bad):
        svc = public(
            "svc",
            [good.url, bad.url],
            outlier_detection=outlier(consecutive_5xx=1000, consecutive_gateway_failure=2),
        )
        with gateway(tmp_path, [svc]) as gw:
            bad.behave("fail", status=gateway_status)
            assert_ejected_after_two_to_four(gw, bad)
