"""The sliding-window rule: decisions match its definition and never exceed capacity per window."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings

from ext_authz.ratelimit import Limit, LimitDecision
from ext_authz.ratelimit.window import decide, oldest_counted, prune, to_ms
from tests.support.ratelimit_model import (
    N,
    Scenario,
    allowed_times,
    assert_never_more_than_capacity_per_window,
    replay_reference,
    scenarios,
)


def replay_pure(scenario: Scenario) -> list[tuple[str, Limit, int, LimitDecision]]:
    """Run the scenario through window.decide/prune on plain dicts."""
    store: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    out = []
    for key, limit, now_ms in scenario.timeline():
        buckets = store[(key, limit.window_s)]
        prune(buckets, now_ms, limit.window_s)
        decision, increment = decide(buckets, now_ms, limit)
        if increment is not None:
            buckets[increment] = buckets.get(increment, 0) + 1
        out.append((key, limit, now_ms, decision))
    return out


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_decide_gives_exactly_the_reference_decisions(scenario: Scenario) -> None:
    assert replay_pure(scenario) == replay_reference(scenario)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_interval_of_one_window_allows_more_than_capacity(scenario: Scenario) -> None:
    decisions = replay_pure(scenario)
    for i in range(1, len(decisions) + 1):
        assert_never_more_than_capacity_per_window(decisions[:i])


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_request_is_denied_only_if_capacity_was_used_within_one_window_plus_one_bucket(
    scenario: Scenario,
) -> None:
    decisions = replay_pure(scenario)
    allowed = allowed_times(decisions)
    for key, limit, now_ms, decision in decisions:
        if not decision.allowed:
            reach = limit.window_s * 1000 + limit.window_s * 1000 // N
            recent = [u for u, _ in allowed[(key, limit.window_s)] if now_ms - reach < u <= now_ms]
            assert len(recent) >= limit.capacity


def run(times_ms: list[int], limit: Limit) -> list[LimitDecision]:
    buckets: dict[int, int] = {}
    out = []
    for t in times_ms:
        decision, increment = decide(buckets, t, limit)
        if increment is not None:
            buckets[increment] = buckets.get(increment, 0) + 1
        out.append(decision)
    return out


def test_a_burst_at_the_end_of_one_window_and_the_start_of_the_next_is_not_doubled() -> None:
    limit = Limit(limit=5, window_s=60)
    start = 1_699_999_200_000  # a window edge
    end_of_window = [start + 59_999] * 5
    start_of_next = [start + 60_000 + i for i in range(5)]
    decisions = run(end_of_window + start_of_next, limit)
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 5
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]


def test_a_full_window_later_to_the_millisecond_is_still_inside_the_interval_and_denied() -> None:
    limit = Limit(limit=5, window_s=60)
    start = 1_699_999_200_000  # a window edge; buckets are 6 s wide
    burst = [start + 1] * 5
    decisions = run([*burst, start + 60_000, start + 60_001, start + 65_999, start + 66_000], limit)
    # (start, start + 60 s] holds the burst, so start + 60 s is denied; start + 60.001 s would
    # be fine by the interval bound, but is only allowed once the burst's bucket has left the
    # counted range (at most one bucket width later).
    assert [d.allowed for d in decisions] == [True] * 5 + [False, False, False, True]
    assert decisions[5].retry_after_s == 6


def test_burst_adds_to_the_enforced_capacity_but_not_to_the_advertised_limit() -> None:
    decisions = run([1_000] * 4, Limit(limit=2, window_s=1, burst=1))
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert {d.limit for d in decisions} == {2}
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]


@pytest.mark.parametrize("window_s", [1, 60, 3600])
@pytest.mark.parametrize("offset_ms", [0, 1, 37, 99, 550])
def test_retry_after_is_at_least_a_second_and_waiting_that_long_is_enough(
    window_s: int, offset_ms: int
) -> None:
    limit = Limit(limit=3, window_s=window_s)
    t0 = 1_699_999_200_000 + offset_ms
    buckets: dict[int, int] = {}
    for _ in range(3):
        _, inc = decide(buckets, t0, limit)
        assert inc is not None
        buckets[inc] = buckets.get(inc, 0) + 1
    denied, inc = decide(buckets, t0 + 1, limit)
    assert inc is None and not denied.allowed and denied.remaining == 0
    assert denied.retry_after_s >= 1
    assert denied.retry_after_s <= window_s + window_s / N + 1
    later, _ = decide(buckets, t0 + 1 + denied.retry_after_s * 1000, limit)
    assert later.allowed
    assert denied.reset_s >= denied.retry_after_s


def test_reset_is_when_all_usage_has_drained() -> None:
    limit = Limit(limit=3, window_s=60)
    buckets: dict[int, int] = {}
    t0 = 1_699_999_200_000 + 1_234
    first, inc = decide(buckets, t0, limit)
    assert inc is not None
    buckets[inc] = 1
    assert 60 <= first.reset_s <= 66
    just_before, _ = decide(buckets, t0 + first.reset_s * 1000 - 1_000, limit)
    after, _ = decide(buckets, t0 + first.reset_s * 1000, limit)
    assert just_before.remaining == limit.capacity - 2
    assert after.remaining == limit.capacity - 1


def test_milliseconds_round_trip_through_float_seconds() -> None:
    assert all(to_ms(ms / 1000) == ms for ms in range(0, 20_000))
    assert to_ms(1_699_999_200.001) == 1_699_999_200_001


def test_prune_keeps_every_bucket_that_can_still_be_counted() -> None:
    now = 1_699_999_200_000  # bucket 16_999_992 of a 1 s window (100 ms buckets)
    b = now // 100
    buckets = {b - 11: 1, b - 10: 2, b: 3, b + 1: 4}
    prune(buckets, now, 1)
    assert buckets == {b - 10: 2, b: 3, b + 1: 4}
    # What MemoryLimiter's sweep asks to drop a key: is its newest bucket still counted?
    assert max(buckets) >= oldest_counted(now, 1)
    assert max(buckets) < oldest_counted(now + 2_000, 1)


@pytest.mark.parametrize(("limit", "window_s", "burst"), [(0, 60, 0), (1, 0, 0), (1, 60, -1)])
def test_nonsense_limits_are_rejected(limit: int, window_s: int, burst: int) -> None:
    with pytest.raises(ValueError):
        Limit(limit=limit, window_s=window_s, burst=burst)
