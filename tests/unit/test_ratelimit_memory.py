"""The in-memory limiter decides exactly like the definition, stays bounded and is thread-safe."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings

from ext_authz.ratelimit import Limit, LimitDecision, MemoryLimiter
from tests.support.fakes import FakeClock, hammer
from tests.support.ratelimit_model import (
    Scenario,
    assert_never_more_than_capacity_per_window,
    replay_reference,
    scenarios,
)

EDGE = 1_699_999_200.0  # seconds, on every window and bucket edge


def replay(scenario: Scenario) -> list[tuple[str, Limit, int, LimitDecision]]:
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock)
    out = []
    for key, limit, now_ms in scenario.timeline():
        clock.now = now_ms / 1000
        out.append((key, limit, now_ms, limiter.hit(key, limit)))
    return out


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_memory_backend_gives_exactly_the_reference_decisions(scenario: Scenario) -> None:
    assert replay(scenario) == replay_reference(scenario)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_memory_backend_never_allows_more_than_capacity_in_any_window(scenario: Scenario) -> None:
    assert_never_more_than_capacity_per_window(replay(scenario))


def test_a_burst_straddling_a_window_edge_is_not_doubled() -> None:
    clock = FakeClock(EDGE - 0.001)
    limiter = MemoryLimiter(clock=clock)
    limit = Limit(limit=3, window_s=1)
    before = [limiter.hit("k", limit).allowed for _ in range(3)]
    clock.now = EDGE
    after = [limiter.hit("k", limit).allowed for _ in range(3)]
    assert before == [True, True, True]
    assert after == [False, False, False]


def test_waiting_retry_after_seconds_gets_a_request_through() -> None:
    clock = FakeClock(EDGE + 12.345)
    limiter = MemoryLimiter(clock=clock)
    limit = Limit(limit=2, window_s=60, burst=1)
    assert all(limiter.hit("k", limit).allowed for _ in range(3))
    denied = limiter.hit("k", limit)
    assert not denied.allowed and denied.retry_after_s >= 1
    clock.now += denied.retry_after_s
    assert limiter.hit("k", limit).allowed


def test_keys_and_windows_are_limited_independently() -> None:
    limiter = MemoryLimiter(clock=FakeClock(EDGE))
    per_second, per_minute = Limit(limit=1, window_s=1), Limit(limit=1, window_s=60)
    assert limiter.hit("alice", per_second).allowed
    assert limiter.hit("alice", per_minute).allowed
    assert limiter.hit("bob", per_second).allowed
    assert not limiter.hit("alice", per_second).allowed
    assert not limiter.hit("alice", per_minute).allowed


def test_at_the_key_cap_no_key_that_still_counts_is_evicted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = MemoryLimiter(clock=FakeClock(EDGE), max_keys=1000, log=logging.getLogger("cap"))
    limit = Limit(limit=1, window_s=3600)
    for i in range(1000):
        assert limiter.hit(f"user-{i}", limit).allowed
    with caplog.at_level(logging.WARNING, "cap"):
        for i in range(1000, 5000):
            # Fail open (the default policy): a newcomer passes, uncounted and not stored.
            decision = limiter.hit(f"user-{i}", limit)
            assert decision.allowed and decision.remaining == limit.limit
            assert len(limiter) == 1000
    # Every user held still has its usage: nobody's limit was loosened by a newcomer.
    assert not limiter.hit("user-0", limit).allowed
    assert not limiter.hit("user-999", limit).allowed
    assert limiter.refused_at_cap == 4000
    assert [r.getMessage() for r in caplog.records if r.name == "cap"] == [
        "in-memory rate limiter full: every key still counts; new keys fail open"
    ]


def test_at_the_key_cap_failing_closed_denies_a_newcomer_with_retry_after() -> None:
    limiter = MemoryLimiter(clock=FakeClock(EDGE), max_keys=10, fail_open=False)
    limit = Limit(limit=5, window_s=60)
    for i in range(10):
        assert limiter.hit(f"user-{i}", limit).allowed
    refused = limiter.hit("newcomer", limit)
    assert (refused.allowed, refused.retry_after_s) == (False, 1)
    assert limiter.hit("user-3", limit).allowed  # those held are counted as always


def test_at_the_key_cap_idle_keys_make_room_for_new_ones() -> None:
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock, max_keys=10, fail_open=False)
    for i in range(10):
        limiter.hit(f"short-{i}", Limit(limit=1, window_s=1))
    clock.now += 1.1  # the short keys went idle
    hourly = Limit(limit=1, window_s=3600)
    for i in range(10):
        assert limiter.hit(f"user-{i}", hourly).allowed
        assert not limiter.hit(f"user-{i}", hourly).allowed  # stored and counted
    assert len(limiter) == 10
    assert limiter.refused_at_cap == 0


def test_idle_keys_are_dropped() -> None:
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock)
    limit = Limit(limit=5, window_s=1)
    for i in range(100):
        limiter.hit(f"user-{i}", limit)
    assert len(limiter) == 100
    clock.now += 1.1  # one window plus one bucket: nothing is counted any more
    for _ in range(20):
        limiter.hit("active", limit)
    assert len(limiter) == 1


def test_a_key_touched_after_it_went_idle_starts_afresh() -> None:
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock)
    limit = Limit(limit=2, window_s=60)
    for _ in range(3):
        limiter.hit("k", limit)
    clock.now += 66
    decision = limiter.hit("k", limit)
    assert decision.allowed and decision.remaining == 1


def test_threads_hammering_one_key_never_get_more_than_capacity() -> None:
    limiter = MemoryLimiter(clock=FakeClock(EDGE))  # frozen: all requests fall in one window
    limit = Limit(limit=40, window_s=60, burst=10)
    assert hammer(limiter, limit, threads=8, hits_each=200) == limit.capacity
