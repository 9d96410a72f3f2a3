"""Rate limits shared through a real 3-master Redis Cluster started by the test: through Envoy,
every user gets exactly its limit although their keys live on different nodes; a slot moved to
another node mid-count is followed (MOVED) and keeps its count; a single-server URL pointing at
a cluster node refuses to start."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ext_authz.ratelimit import Limit
from ext_authz.ratelimit.redis_backend import RedisLimiter, redis_key
from sidecar.echo import EchoServer
from tests.support import http, redis_servers, stack, tokens
from tests.support.catalogs import write_catalog

USERS = 30
PER_MINUTE = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_servers.Cluster]:
    with redis_servers.cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def prefix(cluster: redis_servers.Cluster) -> Iterator[str]:
    p = f"test-rl-{uuid.uuid4().hex}:"
    yield p
    for client in cluster.node_clients():
        keys = list(client.scan_iter(match=f"{p}*"))
        if keys:
            for key in keys:  # one by one: keys on one node may span slots
                client.delete(key)
        client.close()


def keys_per_node(cluster: redis_servers.Cluster, prefix: str) -> list[int]:
    counts = []
    for client in cluster.node_clients():
        counts.append(len(list(client.scan_iter(match=f"{prefix}*"))))
        client.close()
    return counts


def test_every_user_gets_exactly_its_limit_across_the_cluster(
    cluster: redis_servers.Cluster,
    prefix: str,
    tmp_path: Path,
    echo: Callable[[str], EchoServer],
) -> None:
    upstream = echo("api")
    service = {"service_name": "api", "base_path": "/api", "rbac_required": False}
    catalog = write_catalog(
        tmp_path,
        [
            {
                **service,
                "internal_url": f"http://127.0.0.1:{upstream.port}",
                "rate_limit": {"requests_per_minute": PER_MINUTE},
            }
        ],
    )
    xds = stack.start_xds(catalog, tmp_path)
    procs = [xds.proc]
    try:
        authz = stack.start_authz(
            tmp_path,
            args=[
                *("--rate-limit-backend", "redis", "--rate-limit-failure", "closed"),
                *("--redis-url", cluster.url, "--redis-key-prefix", prefix),
                *("--redis-timeout-ms", "500"),
            ],
        )
        procs.append(authz.proc)
        envoy = stack.start_envoy(xds, tmp_path, authz=authz)
        procs.append(envoy.proc)
        stack.wait_for_route(envoy, "/api/x")
        statuses = {}
        for n in range(USERS):
            user = f"user-{n}"
            bearer = tokens.bearer(sub=user, tenant=None)
            statuses[user] = [http.get(envoy.url + "/api/x", bearer).status for _ in range(5)]
        wrong = {u: s for u, s in statuses.items() if s != [200] * PER_MINUTE + [429, 429]}
        assert wrong == {}
        # The users' keys really are spread over all three masters.
        assert all(count > 0 for count in keys_per_node(cluster, prefix))
        assert sum(keys_per_node(cluster, prefix)) == USERS
        assert "ext_authz_rate_limit_backend_errors_total 0.0" in authz.metrics()
    finally:
        for p in reversed(procs):
            p.stop()


def owner_of(clients: list[redis.Redis], slot: int) -> int:
    for i, client in enumerate(clients):
        if client.cluster("COUNTKEYSINSLOT", slot) > 0:
            return i
    raise AssertionError(f"no node holds keys of slot {slot}")


def move_slot(clients: list[redis.Redis], ports: list[int], slot: int, src: int, dst: int) -> None:
    """Migrate `slot` and its keys from node `src` to node `dst`, as `redis-cli --cluster
    reshard` does."""
    src_id, dst_id = clients[src].cluster("MYID"), clients[dst].cluster("MYID")
    clients[dst].cluster("SETSLOT", slot, "IMPORTING", src_id)
    clients[src].cluster("SETSLOT", slot, "MIGRATING", dst_id)
    for key in clients[src].cluster("GETKEYSINSLOT", slot, 100):
        clients[src].migrate("127.0.0.1", ports[dst], key, 0, 5000)
    for client in clients:
        client.cluster("SETSLOT", slot, "NODE", dst_id)


def test_a_slot_moved_to_another_node_keeps_counting(
    cluster: redis_servers.Cluster, prefix: str
) -> None:
    limiter = RedisLimiter.from_url(cluster.url, timeout_ms=500, prefix=prefix)
    clients = cluster.node_clients()
    limit = Limit(limit=4, window_s=60)
    try:
        first = [limiter.hit("alice", limit).allowed for _ in range(2)]
        slot = int(clients[0].cluster("KEYSLOT", redis_key(prefix, "alice", 60)))
        src = owner_of(clients, slot)
        dst = (src + 1) % len(clients)
        move_slot(clients, [n.port for n in cluster.nodes], slot, src, dst)
        assert owner_of(clients, slot) == dst
        after = [limiter.hit("alice", limit).allowed for _ in range(3)]
    finally:
        limiter.close()
        for c in clients:
            c.close()
    assert first + after == [True, True, True, True, False]


def test_a_single_server_url_pointing_at_a_cluster_node_refuses_to_start(
    cluster: redis_servers.Cluster,
) -> None:
    result = stack.run_authz_to_exit(
        {"SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode()},
        *("--rate-limit-backend", "redis"),
        *("--redis-url", f"redis://127.0.0.1:{cluster.nodes[0].port}/0"),
    )
    assert result.returncode == 1
    assert "points at a Redis Cluster node: write redis+cluster://" in result.stderr
