"""The sliding-window rule: decisions match its definition and never exceed capacity per window.

This module also holds the reference model and the scenario strategy that the memory and Redis
backend tests replay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz.ratelimit import Decision, Limit
from ext_authz.ratelimit.window import decide, is_idle, prune, to_ms

N = 10  # buckets per window, as defined


def ceil_s(ms: int) -> int:
    return -(-ms // 1000)


class ReferenceLimiter:
    """Straight from the definition, with no buckets stored: keep the allowed timestamps.

    A request at ``t`` is allowed iff fewer than ``capacity`` allowed timestamps have a bucket
    index (``ms // (W*1000 // N)``) in ``[b(t) - N, b(t)]``. Retry-After and Reset are found by
    scanning the following bucket starts for the first moment the count drops below capacity,
    respectively to zero (counts only change at bucket starts).
    """

    def __init__(self) -> None:
        self.allowed: dict[tuple[str, int], list[int]] = defaultdict(list)

    def hit(self, key: str, now_ms: int, limit: Limit) -> Decision:
        times = self.allowed[(key, limit.window_s)]
        w = limit.window_s * 1000 // N

        def counted_at(t_ms: int) -> int:
            b = t_ms // w
            return sum(1 for u in times if b - N <= u // w <= b)

        def first_bucket_start_where(ok: Callable[[int], bool]) -> int:
            k = now_ms // w + 1
            while not ok(counted_at(k * w)):
                k += 1
            return k * w - now_ms

        if counted_at(now_ms) < limit.capacity:
            times.append(now_ms)
            return Decision(
                allowed=True,
                limit=limit.limit,
                remaining=limit.capacity - counted_at(now_ms),
                reset_s=ceil_s(first_bucket_start_where(lambda n: n == 0)),
                retry_after_s=0,
            )
        return Decision(
            allowed=False,
            limit=limit.limit,
            remaining=0,
            reset_s=ceil_s(first_bucket_start_where(lambda n: n == 0)),
            retry_after_s=max(1, ceil_s(first_bucket_start_where(lambda n: n < limit.capacity))),
        )


@dataclass(frozen=True)
class Scenario:
    """Requests on a few routes (key + limit; keys may repeat with other limits) over time."""

    start_ms: int
    routes: list[tuple[str, Limit]]
    steps: list[tuple[int, int]]  # (route index, ms since the previous request)

    def timeline(self) -> list[tuple[str, Limit, int]]:
        """Each request as (key, limit, absolute ms)."""
        out, now = [], self.start_ms
        for route, step in self.steps:
            now += step
            key, limit = self.routes[route]
            out.append((key, limit, now))
        return out


EDGE_STEPS_MS = [0, 0, 0, 1, 99, 100, 101, 999, 1000, 1001, 1100, 6000, 60_000, 66_000]
EDGE_STEPS_MS += [360_000, 3_599_999, 3_600_000, 3_960_000]
limits = st.builds(
    Limit,
    limit=st.integers(1, 4),
    window_s=st.sampled_from([1, 60, 3600]),
    burst=st.integers(0, 2),
)
steps_ms = st.one_of(
    st.sampled_from(EDGE_STEPS_MS), st.integers(0, 1_500), st.integers(0, 4_000_000)
)


@st.composite
def scenarios(draw: st.DrawFn, max_steps: int = 60) -> Scenario:
    routes = draw(
        st.lists(st.tuples(st.sampled_from(["alice", "bob"]), limits), min_size=1, max_size=3)
    )
    start_ms = draw(
        st.one_of(
            st.just(1_699_999_200_000),  # aligned to every window and bucket edge
            st.integers(0, 2_000_000_000_000),
        )
    )
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, len(routes) - 1), steps_ms), min_size=1, max_size=max_steps
        )
    )
    return Scenario(start_ms, routes, steps)


def allowed_times(
    decisions: list[tuple[str, Limit, int, Decision]],
) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """Allowed requests per (key, window) as (ms, capacity of the limit it was allowed under)."""
    out: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for key, limit, now_ms, decision in decisions:
        if decision.allowed:
            out[(key, limit.window_s)].append((now_ms, limit.capacity))
    return out


def assert_never_more_than_capacity_per_window(
    decisions: list[tuple[str, Limit, int, Decision]],
) -> None:
    """In every (t - W, t], at most capacity requests were allowed.

    Checking the intervals ending at each allowed request is complete (any interval's allowed
    requests all lie in the one ending at its latest allowed request, whose capacity bounds
    them); intervals ending just before each allowed request leaves the window and exactly at
    window edges are checked too, for good measure.
    """
    for (_, window_s), allowed in allowed_times(decisions).items():
        w_ms = window_s * 1000
        ends = {s for s, _ in allowed} | {s + w_ms - 1 for s, _ in allowed}
        ends |= {s - s % w_ms + k * w_ms for s, _ in allowed for k in (0, 1)}
        for end in ends:
            inside = [(u, c) for u, c in allowed if end - w_ms < u <= end]
            if inside:
                assert len(inside) <= inside[-1][1], (window_s, end, inside)


def replay_pure(scenario: Scenario) -> list[tuple[str, Limit, int, Decision]]:
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


def replay_reference(scenario: Scenario) -> list[tuple[str, Limit, int, Decision]]:
    ref = ReferenceLimiter()
    return [(k, lim, t, ref.hit(k, t, lim)) for k, lim, t in scenario.timeline()]


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


def run(times_ms: list[int], limit: Limit) -> list[Decision]:
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
    assert not is_idle(buckets, now, 1)
    assert is_idle(buckets, now + 2_000, 1)


@pytest.mark.parametrize(("limit", "window_s", "burst"), [(0, 60, 0), (1, 0, 0), (1, 60, -1)])
def test_nonsense_limits_are_rejected(limit: int, window_s: int, burst: int) -> None:
    with pytest.raises(ValueError):
        Limit(limit=limit, window_s=window_s, burst=burst)
