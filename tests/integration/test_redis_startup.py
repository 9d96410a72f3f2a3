"""ext-authz checks its Redis at start: a URL it cannot use, a wrong password, an ACL user
without the commands it needs are start-up errors saying what to change; an unreachable Redis
starts under the failure policy, with /ready saying so; no check ever answers 500. Sentinel is
supported and followed through a failover."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from ext_authz.ratelimit import Limit, LimiterUnavailable
from ext_authz.ratelimit.redis_backend import RedisLimiter, check_backend
from sidecar_shared.contract import RoutePolicy
from tests.support import http, ports, redis_servers, stack, tokens, wait
from tests.support.authz_client import check
from tests.support.policies import encode

LIMITED = encode(RoutePolicy(service="svc", rbac_required=False, rate_limit=Limit(2, 60)))


def run_authz(*args: str) -> subprocess.CompletedProcess[str]:
    secret = {"SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode()}
    return stack.run_authz_to_exit(secret, "--rate-limit-backend", "redis", *args)


def status(authz: stack.Authz) -> int:
    response = check(authz.port, f"Bearer {tokens.token()}", policy=LIMITED)
    if response.HasField("ok_response"):
        return 200
    return int(response.denied_response.status.code)


def test_an_unknown_url_option_is_a_start_up_error_not_a_500_per_request() -> None:
    result = run_authz("--redis-url", "redis://127.0.0.1:6379?cluster=true")
    assert result.returncode == 1
    assert "unknown option 'cluster' (for Redis Cluster write redis+cluster://" in result.stderr


def test_a_wrong_password_is_a_start_up_error(tmp_path: Path) -> None:
    server = redis_servers.start_redis(tmp_path, password="right-password")
    try:
        result = run_authz("--redis-url", f"redis://:wrong-password@127.0.0.1:{server.port}/0")
        missing = run_authz("--redis-url", f"redis://127.0.0.1:{server.port}/0")
    finally:
        server.stop()
    assert result.returncode == 1
    assert "authentication failed (check the user and password in the URL)" in result.stderr
    assert "wrong-password" not in result.stderr
    assert missing.returncode == 1
    assert "authentication failed" in missing.stderr


def test_an_acl_user_without_the_scripting_commands_is_a_start_up_error(tmp_path: Path) -> None:
    server = redis_servers.start_redis(tmp_path)
    try:
        with server.client() as admin:
            admin.acl_setuser(
                "reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+get", "+ping"]
            )
            # What docs/rate-limits.md says a limiter's ACL user needs, less one command its
            # script runs.
            needed = ["+evalsha", "+script|load", "+hgetall", "+hdel", "+hincrby", "+pexpire"]
            admin.acl_setuser(
                "almost",
                enabled=True,
                passwords=["+pw"],
                keys=["sidecar:rl:*"],
                commands=needed[:-1],
            )
            admin.acl_setuser(
                "limiter", enabled=True, passwords=["+pw"], keys=["sidecar:rl:*"], commands=needed
            )
        refused = run_authz("--redis-url", f"redis://reader:pw@127.0.0.1:{server.port}/0")
        almost = run_authz("--redis-url", f"redis://almost:pw@127.0.0.1:{server.port}/0")
        allowed = check_backend(f"redis://limiter:pw@127.0.0.1:{server.port}/0")
    finally:
        server.stop()
    for result in (refused, almost):
        assert result.returncode == 1
        assert "the Redis user may not run what rate limiting needs (+evalsha" in result.stderr
    assert allowed is None


def test_a_plain_server_behind_a_cluster_url_is_a_start_up_error() -> None:
    result = run_authz("--redis-url", "redis+cluster://127.0.0.1:6379")
    assert result.returncode == 1
    assert "the server is not in cluster mode: write redis://host:port" in result.stderr


def test_an_unreachable_redis_fails_closed_reports_it_in_ready_and_recovers(
    tmp_path: Path,
) -> None:
    port = ports.free_port()
    authz = stack.start_authz(
        tmp_path,
        args=[
            *("--rate-limit-backend", "redis", "--rate-limit-failure", "closed"),
            *("--redis-url", f"redis://127.0.0.1:{port}/0", "--redis-timeout-ms", "200"),
            *("--redis-key-prefix", f"test-rl-{uuid.uuid4().hex}:"),
        ],
    )
    with stack.stopping(authz.proc):
        ready = http.get(f"http://127.0.0.1:{authz.http_port}/ready")
        assert ready.status == 200
        assert b"rate-limit backend unavailable: failing closed" in ready.body
        assert "ext_authz_rate_limit_backend_available 0.0" in authz.metrics()
        assert status(authz) == 429
        server = redis_servers.start_redis(tmp_path, port=port)
        try:
            wait.wait_until(lambda: status(authz) == 200, what="Redis back in use")
            assert http.get(f"http://127.0.0.1:{authz.http_port}/ready").body == b"ok\n"
            assert "ext_authz_rate_limit_backend_available 1.0" in authz.metrics()
        finally:
            server.stop()
        output = authz.proc.output()
        assert output.count("rate limiter unavailable, failing closed") == 1
        assert output.count("rate limiter recovered") == 1
        assert "Traceback" not in output


def test_sentinel_is_followed_through_a_failover(tmp_path: Path) -> None:
    with redis_servers.sentinel(tmp_path) as setup:
        assert check_backend(setup.url) is None
        limiter = RedisLimiter.from_url(setup.url, timeout_ms=500, prefix="sentinel-test:")
        limit = Limit(limit=5, window_s=60)
        try:
            before = [limiter.hit("alice", limit).allowed for _ in range(3)]
            with setup.master.client() as master:
                assert master.execute_command("WAIT", 1, 2000) == 1  # the replica has it all
            with setup.sentinel.client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", setup.service)
            wait.wait_until(
                lambda: setup.master_port() == setup.replica.port,
                timeout=30,
                what="the replica promoted",
            )

            def hit() -> bool | None:
                try:
                    return limiter.hit("alice", limit).allowed
                except LimiterUnavailable:
                    return None  # the check in flight when the master changed

            after = [wait.wait_until(lambda: hit() is not None, timeout=30)]
            after += [bool(hit()) for _ in range(3)]
        finally:
            limiter.close()
        assert before == [True, True, True]
        # The new master carries on from the replicated count: 2 more, then denied.
        assert after == [True, True, False, False]
        with setup.replica.client() as promoted:
            assert promoted.keys("sentinel-test:*") == [b"sentinel-test:{alice}:60"]


def test_a_sentinel_that_does_not_know_the_service_is_reported(tmp_path: Path) -> None:
    with redis_servers.sentinel(tmp_path) as setup:
        reason = check_backend(f"redis+sentinel://127.0.0.1:{setup.sentinel.port}/nosuch")
    assert reason is not None
    assert "No master found for 'nosuch'" in reason
