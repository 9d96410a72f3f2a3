"""When a drain of Envoy is over, from its admin's counts (`sidecar.drain`)."""

from __future__ import annotations

from sidecar.drain import DrainWatch, Traffic, parse_stats

STATS = """\
http.admin.downstream_cx_active: 1
http.admin.downstream_rq_active: 1
http.admin.downstream_rq_total: 40
http.ingress_http.downstream_cx_active: 4
http.ingress_http.downstream_rq_active: 3
http.ingress_http.downstream_rq_total: 120
http.side_http.downstream_cx_active: 1
http.side_http.downstream_rq_active: 0
http.side_http.downstream_rq_total: 2
listener.0.0.0.0_10000.downstream_cx_active: 5
"""


def test_the_counts_sum_every_connection_manager_but_the_admins() -> None:
    assert parse_stats(STATS) == Traffic(connections=5, in_flight=3, received=122)
    assert parse_stats("") == Traffic(0, 0, 0)


def test_a_drain_is_over_once_no_connection_is_open() -> None:
    watch = DrainWatch(started=0.0, timeout_s=10, quiet_s=1)
    assert watch.over(Traffic(2, 2, 10), 0.1) is None
    assert watch.over(Traffic(0, 0, 12), 0.2) == "no client connection open"


def test_idle_kept_alive_connections_end_the_drain_after_the_quiet_time() -> None:
    watch = DrainWatch(started=0.0, timeout_s=10, quiet_s=1)
    assert watch.over(Traffic(3, 1, 10), 0.0) is None
    assert watch.over(Traffic(3, 0, 11), 0.5) is None  # the last answer went out just now
    assert watch.over(Traffic(3, 0, 11), 1.0) is None
    assert watch.over(Traffic(3, 0, 11), 1.4) is None
    assert watch.over(Traffic(3, 0, 11), 2.0) == "no request in flight for 1 s"


def test_a_request_that_arrives_while_quiet_starts_the_quiet_time_again() -> None:
    watch = DrainWatch(started=0.0, timeout_s=10, quiet_s=1)
    watch.over(Traffic(1, 0, 5), 0.0)
    watch.over(Traffic(1, 0, 5), 0.1)
    assert watch.over(Traffic(1, 0, 6), 0.9) is None  # a short one came and went between polls
    assert watch.over(Traffic(1, 0, 6), 1.5) is None
    assert watch.over(Traffic(1, 0, 6), 2.0) == "no request in flight for 1 s"


def test_requests_still_in_flight_at_the_timeout_end_the_drain_and_are_counted() -> None:
    watch = DrainWatch(started=0.0, timeout_s=2, quiet_s=1)
    assert watch.over(Traffic(4, 4, 4), 1.0) is None
    assert watch.over(Traffic(4, 4, 4), 2.0) == "drain timeout: 4 request(s) still in flight"
