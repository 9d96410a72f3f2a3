"""A Sentinel failover under steady checks: the limiter stops counting on the old master as soon
as the Sentinels announce the new one, so the counts a failover loses are bounded by the checks
of a moment, not by the seconds until the old master is demoted (real master, replica and
Sentinel)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from ext_authz.ratelimit.base import Limit, LimiterUnavailable
from ext_authz.ratelimit.redis_backend import RedisLimiter, redis_key
from tests.support import redis_servers, wait

pytestmark = pytest.mark.integration

PACE_S = 0.005  # one check every 5 ms: about 200 a second
LOST_BOUND = 40  # the checks of 0.2 s at that pace


def test_a_failover_loses_at_most_the_checks_of_a_moment(tmp_path: Path) -> None:
    prefix = f"failover-{uuid.uuid4().hex}:"
    limit = Limit(limit=1_000_000, window_s=3600)
    with redis_servers.sentinel(tmp_path) as setup:
        limiter = RedisLimiter.from_url(setup.url, timeout_ms=500, prefix=prefix)
        counted = 0
        try:
            assert limiter.hit("alice", limit).allowed
            counted += 1
            with setup.master.client() as master:
                assert master.execute_command("WAIT", 1, 2000) == 1
            with setup.sentinel.client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", setup.service)
            switched_at: float | None = None
            deadline = time.monotonic() + 60
            # Checks go on through the failover and for 3 s after the Sentinel names the new
            # master: long enough for an old master that is not yet demoted to take writes.
            while switched_at is None or time.monotonic() < switched_at + 3:
                assert time.monotonic() < deadline, "the failover did not complete"
                try:
                    if limiter.hit("alice", limit).allowed:
                        counted += 1
                except LimiterUnavailable:
                    pass  # a check in flight when the master changed: not counted
                if switched_at is None and setup.master_port() == setup.replica.port:
                    switched_at = time.monotonic()
                time.sleep(PACE_S)
        finally:
            limiter.close()
        # The old master, demoted, takes the new master's data: what it counted alone is gone.
        with setup.master.client(socket_timeout=2) as old:
            wait.wait_until(
                lambda: old.info("replication").get("master_link_status") == "up",
                timeout=30,
                what="the old master following the new one",
            )
        with setup.replica.client(socket_timeout=2) as promoted:
            kept = sum(int(v) for v in promoted.hvals(redis_key(prefix, "alice", limit.window_s)))
            promoted.delete(redis_key(prefix, "alice", limit.window_s))
    assert counted > 200  # the checks went on through the failover
    assert 0 <= counted - kept <= LOST_BOUND, (counted, kept)
