"""The in-memory limiter's allow-only path (`MemoryLimiter.count`, the decision core's fast
path) decides exactly like the definition: mixed with `hit` in any order, the answers are the
reference model's, and the window guarantee holds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz.ratelimit import Limit, LimitDecision, MemoryLimiter
from tests.support.fakes import FakeClock
from tests.support.ratelimit_model import (
    Scenario,
    assert_never_more_than_capacity_per_window,
    replay_reference,
    scenarios,
)

EDGE = 1_699_999_200.0


def replay_mixed(
    scenario: Scenario, fast: list[bool]
) -> list[tuple[str, Limit, int, LimitDecision]]:
    """Each request through `count` when `fast` says so (falling back to `hit` as the core
    does: a key not held, or a denial), else through `hit`."""
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock)
    out = []
    for i, (key, limit, now_ms) in enumerate(scenario.timeline()):
        clock.now = now_ms / 1000
        counted = limiter.count(key, limit) if fast[i % len(fast)] else None
        if counted is None:
            decision = limiter.hit(key, limit)
        else:
            remaining, reset_s = counted
            decision = LimitDecision(True, limit.limit, remaining, reset_s, 0)
        out.append((key, limit, now_ms, decision))
        if i % 7 == 6:
            limiter.sweep()  # the transport's tick, at any moment
    return out


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.lists(st.booleans(), min_size=1, max_size=8))
def test_counting_fast_gives_exactly_the_reference_decisions(
    scenario: Scenario, fast: list[bool]
) -> None:
    assert replay_mixed(scenario, fast) == replay_reference(scenario)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_counting_fast_never_allows_more_than_capacity_in_any_window(scenario: Scenario) -> None:
    assert_never_more_than_capacity_per_window(replay_mixed(scenario, [True]))


def test_count_leaves_a_key_it_does_not_hold_and_a_denial_to_hit() -> None:
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock)
    limit = Limit(limit=2, window_s=60)
    assert limiter.count("k", limit) is None  # not held: nothing counted
    assert limiter.hit("k", limit).remaining == 1
    assert limiter.count("k", limit) == (0, 66)
    assert limiter.count("k", limit) is None  # would be denied: nothing counted
    assert not limiter.hit("k", limit).allowed
    clock.now += 66
    assert limiter.count("k", limit) == (1, 66)


def test_the_tick_sweeps_idle_keys() -> None:
    clock = FakeClock(EDGE)
    limiter = MemoryLimiter(clock=clock)
    limit = Limit(limit=5, window_s=1)
    for i in range(20):
        limiter.hit(f"user-{i}", limit)
    clock.now += 1.1
    limiter.sweep()
    assert len(limiter) == 12  # the sweep drops up to `sweep_per_call` (8) a time
    limiter.sweep()
    limiter.sweep()
    assert len(limiter) == 0
