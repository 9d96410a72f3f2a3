"""Audit completeness: every denial is a line, or is counted by service and reason in a summary
line written within a second of the first one suppressed, whatever comes next."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from ext_authz.audit import MAX_SUMMARY_KEYS, OTHER, AuditLog
from ext_authz.decision import CheckInput, Decision, Outcome
from ext_authz.observers import AuditObserver
from tests.support.fakes import FakeClock
from tests.support.wait import wait_until

NOW = 1_800_000_000.0


def denial(client: str, service: str = "orders", reason: str = "bad_signature") -> Decision:
    request = CheckInput("GET", "/orders/1", {}, {}, client)
    return Decision(request, Outcome(401, reason, "no", "r"), None, service, NOW, 5, client)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in stream.getvalue().splitlines()]


def accounted(stream: io.StringIO) -> int:
    """Denials written, plus those counted in summaries."""
    found = lines(stream)
    written = sum(1 for x in found if x["decision"] == "deny")
    return written + sum(int(x["suppressed"]) for x in found if x["decision"] == "suppressed")


def test_a_burst_past_the_cap_is_summarized_within_a_second_with_nothing_after_it() -> None:
    stream = io.StringIO()
    log = AuditLog(stream)
    log.start(interval_s=0.01)
    try:
        observer = AuditObserver(log, denials_per_second=10)
        started = time.monotonic()
        for n in range(60):
            observer.observe(denial("203.0.113.1", reason="bad_signature" if n % 2 else "expired"))
        # Nothing comes after the burst: the summary is the writer thread's, on a timer.
        wait_until(lambda: accounted(stream) == 60, timeout=1.0, what="60 denials accounted")
        assert time.monotonic() - started < 1.0
    finally:
        log.close()
    found = lines(stream)
    assert sum(1 for x in found if x["decision"] == "deny") == 10
    (summary,) = [x for x in found if x["decision"] == "suppressed"]
    assert summary["suppressed"] == 50
    assert sorted(summary["counts"], key=lambda c: c["reason"]) == [
        {"service": "orders", "reason": "bad_signature", "denials": 25},
        {"service": "orders", "reason": "expired", "denials": 25},
    ]


def test_the_cap_is_one_for_the_process_not_a_small_one_per_address() -> None:
    clock = FakeClock(NOW)
    stream = io.StringIO()
    log = AuditLog(stream, clock=clock)
    observer = AuditObserver(log)  # the default cap
    for _ in range(60):
        observer.observe(denial("203.0.113.1"))  # everyone behind one address
    log.flush()
    assert sum(1 for x in lines(stream) if x["decision"] == "deny") == 60


def test_a_summary_waits_until_it_is_due_then_goes_out_without_another_denial() -> None:
    clock = FakeClock(100.0)
    stream = io.StringIO()
    log = AuditLog(stream, summary_after_s=0.5, clock=clock)
    log.suppress("orders", "expired")
    log._flush(summary_due=clock())
    assert stream.getvalue() == ""
    clock.now += 0.5
    log._flush(summary_due=clock())
    assert [x["suppressed"] for x in lines(stream)] == [1]


def test_a_summary_counts_at_most_a_bounded_number_of_services_apart() -> None:
    stream = io.StringIO()
    log = AuditLog(stream)
    for n in range(MAX_SUMMARY_KEYS + 10):
        log.suppress(f"made-up-{n}", "policy_unauthenticated")
    log.flush()
    (summary,) = lines(stream)
    assert summary["suppressed"] == MAX_SUMMARY_KEYS + 10
    assert len(summary["counts"]) == MAX_SUMMARY_KEYS + 1
    assert summary["counts"][-1] == {"service": OTHER, "reason": OTHER, "denials": 10}
