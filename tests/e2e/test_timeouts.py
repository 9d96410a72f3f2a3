"""`timeout_ms` bounds a request through a real Envoy, whatever the upstream does."""

from __future__ import annotations

from pathlib import Path

from tests.support.gateway import gateway, public
from tests.support.upstreams import running


def test_a_hanging_upstream_gives_504_after_about_the_timeout(tmp_path: Path) -> None:
    with running("a") as (up,):
        # No retries (the default policy retries a timed-out GET after half the timeout).
        svc = public("svc", up.url, timeout_ms=500, retry_policy=None)
        with gateway(tmp_path, [svc]) as gw:
            up.behave("hang")
            resp, took = gw.timed("GET", "/svc/never")
            assert resp.status == 504
            assert resp.json()["error"] == "gateway_timeout"  # Envoy's own reply, in our JSON
            # Not before the timeout; well before anything else would end it (the client's 30 s).
            assert 0.45 <= took < 5, took
            assert up.count("GET") == 1


def test_a_slow_answer_within_the_timeout_arrives(tmp_path: Path) -> None:
    with running("a") as (up,), gateway(tmp_path, [public("svc", up.url, timeout_ms=3000)]) as gw:
        up.behave("slow", delay_s=0.3)
        resp, took = gw.timed("GET", "/svc/slowly")
        assert resp.status == 200
        assert took >= 0.3
