"""Retries through a real Envoy against upstreams that fail on purpose: idempotent requests are
retried as the catalog says; a request that may have reached the upstream is never repeated
unless its method is idempotent or the service opts in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import engines, tokens
from tests.support.gateway import gateway, guarded, public
from tests.support.ports import free_port
from tests.support.upstreams import running

RETRY_5XX = {"max_retries": 3, "retry_on": ["5xx"], "backoff_base_ms": 5, "backoff_max_ms": 20}


def test_a_get_that_fails_twice_is_answered_after_three_attempts(tmp_path: Path) -> None:
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", up.url, retry_policy=RETRY_5XX)]) as gw,
    ):
        up.behave("ok", fail_first=2)
        resp = gw.request("GET", "/svc/items/1")
        assert resp.status == 200
        assert up.count("GET", "/svc/items/1") == 3


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_non_idempotent_request_that_reached_the_upstream_is_not_repeated(
    tmp_path: Path, method: str
) -> None:
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", up.url, retry_policy=RETRY_5XX)]) as gw,
    ):
        up.behave("ok", fail_first=1)
        resp = gw.request(method, "/svc/orders", body=b'{"item": 1}')
        assert resp.status == 503
        assert up.count(method) == 1
        # Nor can the client ask for retries (Envoy drops x-envoy-* from external clients).
        up.behave("ok", fail_first=1)
        asked = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3"}
        assert gw.request(method, "/svc/orders", asked, body=b"{}").status == 503
        assert up.count(method) == 2
        # The same policy still retries an idempotent method.
        up.behave("ok", fail_first=1)
        assert gw.request("PUT", "/svc/orders/1", body=b"{}").status == 200
        assert up.count("PUT") == 2


def test_a_service_may_opt_in_to_retrying_non_idempotent_requests(tmp_path: Path) -> None:
    policy = {**RETRY_5XX, "retry_non_idempotent": True}
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", up.url, retry_policy=policy)]) as gw,
    ):
        up.behave("ok", fail_first=1)
        assert gw.request("POST", "/svc/orders", body=b"{}").status == 200
        assert up.count("POST") == 2


def test_a_non_idempotent_request_is_retried_when_it_never_reached_the_upstream(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every connect fails
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", [dead, up.url], retry_policy=RETRY_5XX)]) as gw,
    ):
        # Round robin sends about half of the requests to the dead endpoint first.
        statuses = [gw.request("POST", f"/svc/orders/{n}", body=b"{}").status for n in range(8)]
        assert statuses == [200] * 8
        assert [s.path for s in up.seen("POST")] == [f"/svc/orders/{n}" for n in range(8)]


def test_back_off_grows_between_attempts(tmp_path: Path) -> None:
    # Envoy waits a random time below base * 2^n before retry n+1 (full jitter): on average 20,
    # 40, 80, 160 and 320 ms here. Summed over several requests, the last two waits dwarf the
    # first two; a constant back-off would make them alike.
    policy = {"max_retries": 5, "retry_on": ["5xx"], "backoff_base_ms": 40, "backoff_max_ms": 2000}
    early, late = 0.0, 0.0
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", up.url, retry_policy=policy)]) as gw,
    ):
        up.behave("fail")
        for n in range(5):
            path = f"/svc/try/{n}"
            assert gw.request("GET", path).status == 503
            gaps = up.gaps_ms(path=path)
            assert len(gaps) == 5
            early += gaps[0] + gaps[1]
            late += gaps[3] + gaps[4]
    assert late > 2 * early, (early, late)


def test_the_per_try_timeout_bounds_each_attempt(tmp_path: Path) -> None:
    policy = {**RETRY_5XX, "max_retries": 2, "per_try_timeout_ms": 300}
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", up.url, timeout_ms=20_000, retry_policy=policy)]) as gw,
    ):
        up.behave("hang")
        resp, took = gw.timed("GET", "/svc/slow")
        assert resp.status == 504
        assert up.count("GET") == 3
        # Each attempt was given its 300 ms, and the whole took far less than the 20 s total.
        assert all(gap >= 250 for gap in up.gaps_ms("GET")), up.gaps_ms("GET")
        assert 0.85 <= took < 10, took

        # An attempt that hangs is abandoned and the next one answers.
        up.behave("ok", fail_first=1, fail_mode="hang")
        resp, took = gw.timed("GET", "/svc/slow-once")
        assert resp.status == 200
        assert up.count("GET", "/svc/slow-once") == 2
        assert took < 10, took


def test_the_circuit_breaker_caps_a_retry_storm(tmp_path: Path) -> None:
    # Ten requests at once to an upstream that answers 503 after half a second: without a cap
    # each would be tried four times (40 attempts); one retry at a time leaves most failing fast.
    policy = {"max_retries": 3, "retry_on": ["5xx"], "backoff_base_ms": 5, "backoff_max_ms": 10}
    breaker = {"max_retries": 1}
    with (
        running("a") as (up,),
        gateway(
            tmp_path, [public("svc", up.url, retry_policy=policy, circuit_breaker=breaker)]
        ) as gw,
    ):
        up.behave("slow", status=503, delay_s=0.5)
        responses = gw.at_once(10, "GET", "/svc/storm")
        assert {r.status for r in responses} == {503}
        assert up.count("GET") <= 10 + 3, up.count("GET")
        overflow = gw.stats("cluster.svc.upstream_rq_retry_overflow")
        assert overflow["cluster.svc.upstream_rq_retry_overflow"] >= 5, overflow


def test_a_reset_after_the_request_was_sent_is_retried_for_get_only(tmp_path: Path) -> None:
    policy = {**RETRY_5XX, "retry_on": ["reset"]}
    with (
        running("a") as (up,),
        gateway(tmp_path, [public("svc", up.url, retry_policy=policy)]) as gw,
    ):
        up.behave("ok", fail_first=1, fail_mode="reset")
        assert gw.request("GET", "/svc/r").status == 200
        assert up.count("GET") == 2
        # The upstream read the POST before it reset: repeating it could do it twice.
        up.behave("ok", fail_first=1, fail_mode="reset")
        assert gw.request("POST", "/svc/r", body=b"{}").status == 503
        assert up.count("POST") == 1


def test_a_native_route_retries_idempotent_requests_only(tmp_path: Path) -> None:
    """On a route Envoy's own filters decide (`--decision native`), the retry conditions that
    depend on the method still hold (they run in the identity step's script there), and the
    retried request still carries the verified identity."""
    keys = {**engines.keys_env(tmp_path), "SIDECAR_DECISION": "native"}
    admin = tokens.bearer(engines.rs256_token(sub="rita", tenant=None))
    with (
        running("a") as (up,),
        gateway(tmp_path, [guarded("svc", up.url, retry_policy=RETRY_5XX)], xds_env=keys) as gw,
    ):
        up.behave("ok", fail_first=2)
        assert gw.request("GET", "/svc/items/1", admin).status == 200
        attempts = up.seen("GET")
        assert len(attempts) == 3
        assert {a.headers.get("x-user-id") for a in attempts} == {"rita"}
        up.behave("ok", fail_first=1)
        assert gw.request("POST", "/svc/orders", admin, body=b"{}").status == 503
        assert up.count("POST") == 1
        assert gw.request("GET", "/svc/items/1").status == 401
