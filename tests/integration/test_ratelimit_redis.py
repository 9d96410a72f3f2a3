"""The Redis limiter decides exactly like the definition, in one round trip, and fails cleanly.

Uses the real Redis at 127.0.0.1:6379; every test works under its own key prefix and deletes
its keys afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis
from hypothesis import given, settings
from redis.exceptions import RedisError

from ext_authz.ratelimit import Limit, LimitDecision, LimiterUnavailable
from ext_authz.ratelimit.redis_backend import AsyncRedisLimiter, RedisLimiter
from tests.support.fakes import FakeClock, hammer
from tests.support.ratelimit_model import (
    Scenario,
    assert_never_more_than_capacity_per_window,
    replay_reference,
    scenarios,
)

HOST, PORT = "127.0.0.1", 6379
URL = f"redis://{HOST}:{PORT}/0"
EDGE = 1_699_999_200.0  # seconds, on every window and bucket edge


def delete_keys(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def unique_prefix() -> str:
    return f"test-rl-{uuid4().hex}:"


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    c = redis.Redis(host=HOST, port=PORT)
    yield c
    c.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    p = unique_prefix()
    yield p
    delete_keys(client, p)


class Recorder:
    """Names of the commands a client sent; can make the next EVALSHA name an unknown script."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.break_next_evalsha = False


def recording_client(recorder: Recorder) -> redis.Redis:
    class RecordingConnection(redis.Connection):
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            name = str(args[0]).upper()
            if name == "EVALSHA" and recorder.break_next_evalsha:
                recorder.break_next_evalsha = False
                args = (args[0], "0" * 40, *args[2:])
            recorder.commands.append(name)
            super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    pool = redis.ConnectionPool(host=HOST, port=PORT, connection_class=RecordingConnection)
    return redis.Redis(connection_pool=pool)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


# --- decisions -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_redis_backend_gives_exactly_the_reference_decisions(
    client: redis.Redis, scenario: Scenario
) -> None:
    clock = FakeClock(EDGE)
    p = unique_prefix()
    limiter = RedisLimiter(client, clock=clock, prefix=p)
    try:
        got = []
        for key, limit, now_ms in scenario.timeline():
            clock.now = now_ms / 1000
            got.append((key, limit, now_ms, limiter.hit(key, limit)))
    finally:
        delete_keys(client, p)
    assert got == replay_reference(scenario)
    assert_never_more_than_capacity_per_window(got)


def test_a_burst_straddling_a_window_edge_is_not_doubled(client: redis.Redis, prefix: str) -> None:
    clock = FakeClock(EDGE - 0.001)
    limiter = RedisLimiter(client, clock=clock, prefix=prefix)
    limit = Limit(limit=3, window_s=1)
    before = [limiter.hit("k", limit).allowed for _ in range(3)]
    clock.now = EDGE
    after = [limiter.hit("k", limit).allowed for _ in range(3)]
    assert before == [True, True, True]
    assert after == [False, False, False]


def test_waiting_retry_after_seconds_gets_a_request_through(
    client: redis.Redis, prefix: str
) -> None:
    clock = FakeClock(EDGE + 12.345)
    limiter = RedisLimiter(client, clock=clock, prefix=prefix)
    limit = Limit(limit=2, window_s=60, burst=1)
    assert all(limiter.hit("k", limit).allowed for _ in range(3))
    denied = limiter.hit("k", limit)
    assert denied == LimitDecision(
        allowed=False, limit=2, remaining=0, reset_s=66, retry_after_s=66
    )
    clock.now += denied.retry_after_s
    assert limiter.hit("k", limit).allowed


def test_replicas_sharing_one_redis_share_the_limit(prefix: str) -> None:
    clock = FakeClock(EDGE)
    replicas = [
        RedisLimiter.from_url(URL, timeout_ms=500, clock=clock, prefix=prefix) for _ in range(3)
    ]
    limit = Limit(limit=4, window_s=60)
    try:
        allowed = [replicas[i % 3].hit("k", limit).allowed for i in range(9)]
    finally:
        for r in replicas:
            r.close()
    assert allowed == [True] * 4 + [False] * 5


def test_threads_hammering_one_key_never_get_more_than_capacity(
    client: redis.Redis, prefix: str
) -> None:
    limiter = RedisLimiter(client, clock=FakeClock(EDGE), prefix=prefix)
    limit = Limit(limit=8, window_s=60, burst=2)
    assert hammer(limiter, limit, threads=8, hits_each=25) == limit.capacity


# --- storage -------------------------------------------------------------------------------


def test_keys_are_hash_tagged_per_key_and_window_and_expire(
    client: redis.Redis, prefix: str
) -> None:
    limiter = RedisLimiter(client, clock=FakeClock(EDGE), prefix=prefix)
    limiter.hit("alice", Limit(limit=5, window_s=60))
    limiter.hit("alice", Limit(limit=5, window_s=1))
    keys = {k.decode() for k in client.scan_iter(match=f"{prefix}*")}
    assert keys == {f"{prefix}{{alice}}:60", f"{prefix}{{alice}}:1"}
    assert 60_000 < client.pttl(f"{prefix}{{alice}}:60") <= 60_000 + 6_000 + 1_000
    assert 1_000 < client.pttl(f"{prefix}{{alice}}:1") <= 1_000 + 100 + 1_000
    assert client.type(f"{prefix}{{alice}}:60") == b"hash"


def test_buckets_that_can_no_longer_count_are_deleted(client: redis.Redis, prefix: str) -> None:
    clock = FakeClock(EDGE)
    limiter = RedisLimiter(client, clock=clock, prefix=prefix)
    limit = Limit(limit=100, window_s=60)
    for _ in range(30):  # one request per 6 s bucket, for three minutes
        limiter.hit("k", limit)
        clock.now += 6
    assert client.hlen(limiter.key_for("k", 60)) <= 11


# --- round trips ---------------------------------------------------------------------------


def test_the_script_is_loaded_once_and_each_check_is_one_round_trip(prefix: str) -> None:
    recorder = Recorder()
    client = recording_client(recorder)
    try:
        client.ping()  # connect (and handshake) before counting
        recorder.commands.clear()
        limiter = RedisLimiter(client, clock=FakeClock(EDGE), prefix=prefix)
        for _ in range(5):
            limiter.hit("k", Limit(limit=3, window_s=60))
        assert recorder.commands == ["SCRIPT LOAD"] + ["EVALSHA"] * 5
    finally:
        delete_keys(client, prefix)
        client.close()


def test_a_flushed_script_cache_is_reloaded_transparently(prefix: str) -> None:
    recorder = Recorder()
    client = recording_client(recorder)
    try:
        client.ping()
        limiter = RedisLimiter(client, clock=FakeClock(EDGE), prefix=prefix)
        limit = Limit(limit=3, window_s=60)
        assert limiter.hit("k", limit).remaining == 2
        recorder.commands.clear()
        recorder.break_next_evalsha = True  # the server answers NOSCRIPT, as after a flush
        assert limiter.hit("k", limit).remaining == 1
        assert recorder.commands == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    finally:
        delete_keys(client, prefix)
        client.close()


# --- failures ------------------------------------------------------------------------------


def test_from_url_builds_a_working_limiter(prefix: str) -> None:
    limiter = RedisLimiter.from_url(URL, timeout_ms=500, prefix=prefix, clock=FakeClock(EDGE))
    try:
        decision = limiter.hit("k", Limit(limit=1, window_s=60))
    finally:
        limiter.close()
    assert decision.allowed and decision.remaining == 0


def assert_unavailable_quickly(limiter: RedisLimiter) -> None:
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable) as info:
        limiter.hit("k", Limit(limit=1, window_s=60))
    assert time.monotonic() - started < 1.0
    assert type(info.value) is LimiterUnavailable
    assert not isinstance(info.value, RedisError)


def test_an_unreachable_redis_is_reported_as_unavailable_quickly() -> None:
    limiter = RedisLimiter.from_url(f"redis://{HOST}:{free_port()}/0", timeout_ms=50)
    try:
        assert_unavailable_quickly(limiter)
        assert_unavailable_quickly(limiter)  # and again: nothing is cached from the failure
    finally:
        limiter.close()


def test_a_redis_that_never_answers_is_reported_as_unavailable_after_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(8)  # accepts connections in the kernel, never replies
        limiter = RedisLimiter.from_url(
            f"redis://{HOST}:{silent.getsockname()[1]}/0", timeout_ms=50
        )
        try:
            assert_unavailable_quickly(limiter)
        finally:
            limiter.close()


def test_a_redis_error_reply_is_reported_as_unavailable(client: redis.Redis, prefix: str) -> None:
    limiter = RedisLimiter(client, clock=FakeClock(EDGE), prefix=prefix)
    client.set(limiter.key_for("k", 60), "not a hash")
    assert_unavailable_quickly(limiter)


# --- the asynchronous limiter (the HTTP transport's event loop) ------------------------------


def async_limiter(prefix: str, clock: FakeClock, **kw: Any) -> AsyncRedisLimiter:
    return AsyncRedisLimiter.from_url(URL, timeout_ms=500, prefix=prefix, clock=clock, **kw)


@settings(max_examples=40, deadline=None)
@given(scenarios())
def test_the_async_limiter_gives_exactly_the_reference_decisions(
    client: redis.Redis, scenario: Scenario
) -> None:
    clock = FakeClock(EDGE)
    p = unique_prefix()

    async def replay() -> list[tuple[str, Limit, int, LimitDecision]]:
        limiter = async_limiter(p, clock)
        try:
            got = []
            for key, limit, now_ms in scenario.timeline():
                clock.now = now_ms / 1000
                got.append((key, limit, now_ms, await limiter.hit(key, limit)))
            return got
        finally:
            await limiter.aclose()

    try:
        got = asyncio.run(replay())
    finally:
        delete_keys(client, p)
    assert got == replay_reference(scenario)


def test_concurrent_checks_go_to_redis_as_one_pipeline_and_hold_the_limit(prefix: str) -> None:
    limit = Limit(limit=8, window_s=60, burst=2)

    async def burst() -> tuple[list[bool], int]:
        limiter = async_limiter(prefix, FakeClock(EDGE))
        pipelines = 0
        real = limiter._client.pipeline

        def counted(*args: Any, **kw: Any) -> Any:
            nonlocal pipelines
            pipelines += 1
            return real(*args, **kw)

        limiter._client.pipeline = counted  # type: ignore[method-assign]
        try:
            decisions = await asyncio.gather(*(limiter.hit("k", limit) for _ in range(25)))
            return [d.allowed for d in decisions], pipelines
        finally:
            await limiter.aclose()

    allowed, pipelines = asyncio.run(burst())
    assert allowed == [True] * limit.capacity + [False] * (25 - limit.capacity)
    assert pipelines == 1


def test_the_async_limiter_reloads_a_flushed_script(prefix: str) -> None:
    async def run() -> list[int]:
        limiter = async_limiter(prefix, FakeClock(EDGE))
        try:
            first = await limiter.hit("k", Limit(limit=3, window_s=60))
            limiter._sha = "0" * 40  # as after SCRIPT FLUSH or a failover: NOSCRIPT
            second = await limiter.hit("k", Limit(limit=3, window_s=60))
            return [first.remaining, second.remaining]
        finally:
            await limiter.aclose()

    assert asyncio.run(run()) == [2, 1]


def test_an_unreachable_redis_is_unavailable_to_the_async_limiter_too() -> None:
    async def run() -> None:
        limiter = AsyncRedisLimiter.from_url(f"redis://{HOST}:{free_port()}/0", timeout_ms=50)
        try:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(LimiterUnavailable):
                    await limiter.hit("k", Limit(limit=1, window_s=60))
                assert time.monotonic() - started < 1.0
        finally:
            await limiter.aclose()

    asyncio.run(run())
