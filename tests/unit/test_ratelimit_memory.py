"""The in-memory limiter decides exactly like the definition, stays bounded and is thread-safe."""

from __future__ import annotations

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


def test_the_number_of_keys_held_never_exceeds_max_keys_and_recent_keys_are_kept() -> None:
    limiter = MemoryLimiter(clock=FakeClock(EDGE), max_keys=1000)
    limit = Limit(limit=1, window_s=3600)
    for i in range(5000):
        assert limiter.hit(f"user-{i}", limit).allowed
        assert len(limiter) <= 1000
    assert len(limiter) == 1000
    # The most recently used keys still remember their usage; the oldest were forgotten.
    assert not limiter.hit("user-4999", limit).allowed
    assert limiter.hit("user-0", limit).allowed


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
