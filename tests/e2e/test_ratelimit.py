"""Per-user limits through a real Envoy: headers, 429s, replicas sharing Redis, Redis outages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from sidecar.echo import EchoServer
from sidecar_shared.contract import AUTHZ_TRANSPORTS
from tests.support import http, stack, tcp_proxy, tokens, wait
from tests.support.catalogs import write_json

# api: 5 a minute plus a burst of 1, so 6 requests pass in any minute.
API_CAPACITY = 6

# Every decision, through both of Envoy's ways of calling ext_authz.
pytestmark = pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)


@dataclass
class Stack:
    xds: stack.XdsServer
    workdir: Path
    procs: list[stack.Proc]
    env: dict[str, str] = field(default_factory=dict)  # for its ext_authz servers
    envoys: list[stack.Envoy] = field(default_factory=list)

    def authz(self, name: str, args: list[str] | None = None) -> stack.Authz:
        server = stack.start_authz(
            self.workdir, name=name, env=self.env, args=["--jwt-leeway", "0", *(args or [])]
        )
        self.procs.append(server.proc)
        return server

    def envoy(self, authz: stack.Authz | None, node_id: str) -> stack.Envoy:
        """An Envoy calling `authz` (None: one whose engine never calls ext_authz)."""
        proxy = stack.start_envoy(self.xds, self.workdir, node_id=node_id, authz=authz)
        self.procs.append(proxy.proc)
        self.envoys.append(proxy)
        wait.wait_until(
            lambda: (
                (r := http.try_get(proxy.url + "/health/x")) is not None and r.status in (200, 429)
            ),
            what="routes on " + node_id,
        )
        return proxy


def write_rig_catalog(workdir: Path, upstream: EchoServer) -> Path:
    """api: a per-user limit; health: public, a per-address limit."""
    catalog = workdir / "catalog" / "service_catalog.json"
    catalog.parent.mkdir()
    url = f"http://127.0.0.1:{upstream.port}"
    write_json(
        catalog,
        {
            "services": [
                {
                    "service_name": "api",
                    "base_path": "/api",
                    "internal_url": url,
                    "rbac_required": False,
                    "rate_limit": {"requests_per_minute": 5, "burst": 1},
                },
                {
                    "service_name": "health",
                    "base_path": "/health",
                    "internal_url": url,
                    "public": True,
                    "rate_limit": {"requests_per_minute": 3},
                },
            ]
        },
    )
    return catalog


@pytest.fixture
def rig(tmp_path: Path, echo: Callable[[str], EchoServer], transport: str) -> Iterator[Stack]:
    catalog = write_rig_catalog(tmp_path, echo("api"))
    xds = stack.start_xds(catalog, tmp_path, transport=transport)
    s = Stack(xds, tmp_path, [xds.proc])
    yield s
    for p in reversed(s.procs):
        p.stop()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"test-rl-{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def get(envoy: stack.Envoy, path: str, user: str = "alice") -> http.Response:
    return http.get(envoy.url + path, tokens.bearer(sub=user, tenant=None))


def test_a_user_gets_capacity_requests_then_429_with_headers(rig: Stack) -> None:
    authz = rig.authz("authz")
    envoy = rig.envoy(authz, "edge")
    answers = [get(envoy, "/api/x") for _ in range(API_CAPACITY + 2)]
    assert [a.status for a in answers] == [200] * API_CAPACITY + [429, 429]
    first = answers[0].headers
    assert first["ratelimit-policy"] == '"api";q=5;w=60'
    assert first["ratelimit"].startswith('"api";r=4;t=')
    remaining = [int(a.headers["ratelimit"].split("r=")[1].split(";")[0]) for a in answers]
    # r counts down the advertised 5; the burst of 1 is the sixth, tolerated at r=0.
    assert remaining == [4, 3, 2, 1, 0, 0, 0, 0]
    denied = answers[-1]
    # The window counts whole buckets of W/10: a slot frees within W + W/10.
    assert 1 <= int(denied.headers["retry-after"]) <= 66
    assert denied.json()["error"] == "rate_limited"
    assert denied.headers["ratelimit-policy"] == '"api";q=5;w=60'
    # Another user has a budget of their own.
    assert get(envoy, "/api/x", user="bob").status == 200
    record = wait.wait_until(
        lambda: next(
            (a for a in authz.audit_lines() if a["request_id"] == denied.json()["request_id"]),
            None,
        ),
        what="the 429's audit record",
    )
    assert (record["status"], record["reason"], record["user"]) == (429, "rate_limited", "alice")


def test_legacy_headers_on_request(rig: Stack) -> None:
    envoy = rig.envoy(rig.authz("authz", ["--rate-limit-headers", "legacy"]), "edge")
    resp = get(envoy, "/api/x")
    assert (resp.headers["ratelimit-limit"], resp.headers["ratelimit-remaining"]) == ("5", "4")
    assert 0 < int(resp.headers["ratelimit-reset"]) <= 66
    assert "ratelimit-policy" not in resp.headers


def test_a_public_route_is_limited_per_client_address(rig: Stack) -> None:
    envoy = rig.envoy(rig.authz("authz"), "edge")
    # The rig fixture's readiness probe already spent one of the three.
    statuses = [http.get(envoy.url + "/health/x").status for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


def test_two_replicas_sharing_redis_hold_one_limit(rig: Stack, redis_prefix: str) -> None:
    args = ["--rate-limit-backend", "redis", "--redis-key-prefix", redis_prefix]
    args += ["--redis-timeout-ms", "200"]
    first = rig.envoy(rig.authz("authz-a", args), "edge-a")
    second = rig.envoy(rig.authz("authz-b", args), "edge-b")
    statuses = [get(e, "/api/x").status for _ in range(10) for e in (first, second)]
    # Exact: both replicas read one clock and one store. (Across machines, add clock skew.)
    assert statuses.count(200) == API_CAPACITY
    assert statuses[:API_CAPACITY] == [200] * API_CAPACITY
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = [k.decode() for k in client.scan_iter(match=f"{redis_prefix}*")]
    client.close()
    assert any("{3:api|u|0:|5:alice}" in k for k in keys), keys


def _outage_stack(
    rig: Stack, redis_prefix: str, failure: str
) -> tuple[stack.Envoy, stack.Authz, tcp_proxy.TcpProxy]:
    proxy = tcp_proxy.TcpProxy(6379).start()
    authz = rig.authz(
        "authz",
        [
            *("--rate-limit-backend", "redis", "--rate-limit-failure", failure),
            *("--redis-url", f"redis://127.0.0.1:{proxy.port}/0"),
            *("--redis-key-prefix", redis_prefix, "--redis-timeout-ms", "200"),
        ],
    )
    return rig.envoy(authz, "edge"), authz, proxy


def test_a_redis_outage_fails_open_is_logged_once_and_recovers(
    rig: Stack, redis_prefix: str
) -> None:
    envoy, authz, proxy = _outage_stack(rig, redis_prefix, "open")
    try:
        assert [get(envoy, "/api/x").status for _ in range(2)] == [200, 200]
        proxy.stop()
        during = [get(envoy, "/api/x") for _ in range(API_CAPACITY + 2)]
        assert [r.status for r in during] == [200] * (API_CAPACITY + 2)
        proxy = tcp_proxy.TcpProxy(6379, port=proxy.port).start()
        after = get(envoy, "/api/x")
        assert after.status == 200
        # Counting resumes from what Redis kept: two before the outage, this one now.
        assert after.headers["ratelimit"].startswith('"api";r=2;')
        metrics = authz.metrics()
        assert "ext_authz_rate_limit_backend_outages_total 1.0" in metrics
        output = authz.proc.output()
        assert output.count("rate limiter unavailable") == 1
        assert output.count("rate limiter recovered") == 1
        assert "Traceback" not in output
    finally:
        proxy.stop()


def test_a_redis_outage_fails_closed_when_configured(rig: Stack, redis_prefix: str) -> None:
    envoy, _, proxy = _outage_stack(rig, redis_prefix, "closed")
    try:
        assert get(envoy, "/api/x").status == 200
        proxy.stop()
        denied = get(envoy, "/api/x")
        assert denied.status == 429
        assert denied.headers["retry-after"] == "1"
    finally:
        proxy.stop()


def test_an_unlimited_route_gets_no_rate_limit_headers(rig: Stack) -> None:
    data = json.loads(rig.xds.catalog.read_text())
    data["services"][0]["rate_limit"] = None
    old = wait.wait_until(rig.xds.version)
    rig.xds.catalog.write_text(json.dumps(data))
    wait.wait_until(lambda: rig.xds.version() != old, what="the new catalog")
    envoy = rig.envoy(rig.authz("authz"), "edge")
    statuses = set()
    for _ in range(API_CAPACITY + 2):
        resp = get(envoy, "/api/x")
        statuses.add(resp.status)
        assert "ratelimit" not in resp.headers and "retry-after" not in resp.headers
    assert statuses == {200}
