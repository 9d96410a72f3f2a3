"""The shared outage tracker: an outage begins once, ends once, and its end says how long it
lasted and how many failures it counted."""

from __future__ import annotations

import threading

import pytest

from sidecar_shared.outage import Outage, OutageEnded
from tests.support.fakes import FakeClock, race

pytestmark = pytest.mark.unit


def test_only_the_first_failure_begins_an_outage() -> None:
    outage = Outage(FakeClock(10.0))
    assert not outage.ongoing
    assert outage.failed() is True
    assert outage.failed() is False
    assert outage.failed() is False
    assert outage.ongoing


def test_the_first_success_ends_it_with_its_failures_and_length() -> None:
    clock = FakeClock(10.0)
    outage = Outage(clock)
    outage.failed()
    clock.now = 12.5
    outage.failed()
    clock.now = 14.25
    assert outage.succeeded() == OutageEnded(failures=2, duration_s=4.25)
    assert not outage.ongoing
    assert outage.succeeded() is None


def test_a_success_with_no_outage_on_ends_nothing() -> None:
    assert Outage(FakeClock(0.0)).succeeded() is None


def test_an_outage_after_a_recovery_is_a_new_one() -> None:
    clock = FakeClock(0.0)
    outage = Outage(clock)
    outage.failed()
    outage.failed()
    outage.succeeded()
    clock.now = 100.0
    assert outage.failed() is True
    clock.now = 101.0
    assert outage.succeeded() == OutageEnded(failures=1, duration_s=1.0)


def test_threads_racing_see_one_beginning_and_one_end() -> None:
    outage = Outage(FakeClock(0.0))
    threads = 8
    failed_everywhere = threading.Barrier(threads)
    began: list[bool] = []
    ended: list[OutageEnded | None] = []

    def fail_then_succeed(_: int) -> None:
        began.extend(outage.failed() for _ in range(50))
        failed_everywhere.wait()
        ended.append(outage.succeeded())

    race(fail_then_succeed, threads)
    assert began.count(True) == 1
    ends = [e for e in ended if e is not None]
    assert ends == [OutageEnded(failures=threads * 50, duration_s=0.0)]
