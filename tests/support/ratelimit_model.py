"""The reference model of the sliding-window rule and the scenario strategy that the window,
memory and Redis backend tests all replay."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

from ext_authz.ratelimit import Limit, LimitDecision

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

    def hit(self, key: str, now_ms: int, limit: Limit) -> LimitDecision:
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
            return LimitDecision(
                allowed=True,
                limit=limit.limit,
                remaining=limit.capacity - counted_at(now_ms),
                reset_s=ceil_s(first_bucket_start_where(lambda n: n == 0)),
                retry_after_s=0,
            )
        return LimitDecision(
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
    decisions: list[tuple[str, Limit, int, LimitDecision]],
) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """Allowed requests per (key, window) as (ms, capacity of the limit it was allowed under)."""
    out: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for key, limit, now_ms, decision in decisions:
        if decision.allowed:
            out[(key, limit.window_s)].append((now_ms, limit.capacity))
    return out


def assert_never_more_than_capacity_per_window(
    decisions: list[tuple[str, Limit, int, LimitDecision]],
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


def replay_reference(scenario: Scenario) -> list[tuple[str, Limit, int, LimitDecision]]:
    ref = ReferenceLimiter()
    return [(k, lim, t, ref.hit(k, t, lim)) for k, lim, t in scenario.timeline()]
