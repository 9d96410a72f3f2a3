"""Limits on the other engines (`test_ratelimit.py` is ext_authz's): on `native`, Envoy's token
bucket per Envoy (a user's `capacity` requests, then a 429 with ext_authz's body,
`Retry-After` and `RateLimit-Policy`; no RateLimit headers on allowed answers: docs/engines.md)
with no ext_authz running at all, and a public route's per client address; a limit shared
through Redis stays with ext_authz on `auto`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.echo import EchoServer
from tests.e2e import test_ratelimit as suite
from tests.support import engines, http, stack, tokens, wait

redis_prefix = suite.redis_prefix


@pytest.fixture(autouse=True)
def rs256(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "token", engines.rs256_token)


@pytest.fixture
def start(
    tmp_path: Path, echo: Callable[[str], EchoServer]
) -> Iterator[Callable[..., suite.Stack]]:
    """The suite's rig with an xDS server deciding by `engine`; `env` for both servers."""
    rigs: list[suite.Stack] = []

    def make(engine: str, env: dict[str, str] | None = None) -> suite.Stack:
        keys = {**engines.keys_env(tmp_path), **(env or {})}
        catalog = suite.write_rig_catalog(tmp_path, echo("api"))
        xds = stack.start_xds(catalog, tmp_path, env={**keys, "SIDECAR_DECISION": engine})
        rigs.append(suite.Stack(xds, tmp_path, [xds.proc], env=keys))
        return rigs[-1]

    yield make
    for rig in rigs:
        for p in reversed(rig.procs):
            p.stop()


def test_a_user_gets_capacity_requests_then_429_from_envoys_token_bucket(
    start: Callable[..., suite.Stack],
) -> None:
    envoy = start("native").envoy(None, "edge")  # no ext_authz anywhere
    answers = [suite.get(envoy, "/api/x") for _ in range(suite.API_CAPACITY + 2)]
    assert [a.status for a in answers] == [200] * suite.API_CAPACITY + [429, 429]
    for allowed in answers[: suite.API_CAPACITY]:
        assert "ratelimit" not in allowed.headers and "ratelimit-policy" not in allowed.headers
    denied = answers[-1]
    assert denied.json()["error"] == "rate_limited"
    assert denied.headers["content-type"] == "application/json"
    assert denied.headers["retry-after"] == "60"  # the window: an upper bound
    assert denied.headers["ratelimit-policy"] == '"api";q=5;w=60'
    # Another user has a budget of their own.
    assert suite.get(envoy, "/api/x", user="bob").status == 200
    line = wait.wait_until(
        lambda: engines.access_line(envoy, denied.json()["request_id"]),
        what="the 429's access-log line",
    )
    assert (line["status"], line["details"], line["user"]) == (429, "local_rate_limited", "alice")


def test_a_public_route_is_limited_per_client_address(start: Callable[..., suite.Stack]) -> None:
    rig = start("native")
    suite.test_a_public_route_is_limited_per_client_address(rig)
    (envoy,) = rig.envoys
    assert engines.counters(envoy, "ext_authz") == 0
    # Another address has three of its own.
    other = [http.get_from("127.0.0.2", envoy.url + "/health/x").status for _ in range(4)]
    assert other == [200, 200, 200, 429]


def test_auto_keeps_a_limit_shared_through_redis_on_ext_authz(
    start: Callable[..., suite.Stack], redis_prefix: str
) -> None:
    rig = start("auto", {"SIDECAR_RATE_LIMIT_BACKEND": "redis"})
    suite.test_two_replicas_sharing_redis_hold_one_limit(rig, redis_prefix)
    for envoy in rig.envoys:
        assert engines.counters(envoy, "ext_authz.ok") > 0
        assert engines.counters(envoy, "rbac") == 0
