"""Redis servers a test starts on loopback ports from the OS and stops by PID: a single server
(with a password or ACL users when asked), a 3-master Redis Cluster, a master with a replica
watched by a Sentinel. Nothing is persisted; each server works in the test's directory."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support import ports, stack, wait

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


@dataclass
class RedisServer:
    proc: stack.Proc
    port: int
    password: str | None = None

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.stop()


def _wait_answering(server: RedisServer, client: redis.Redis, what: str) -> None:
    """Until `client` gets PONG from `server`; fails at once if the process exited."""

    def answers() -> bool:
        if not server.proc.alive():
            raise AssertionError(f"redis-server exited:\n{server.proc.output()}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait.wait_until(answers, timeout=15, what=what)


def start_redis(
    workdir: Path, *args: str, name: str = "redis", password: str | None = None, port: int = 0
) -> RedisServer:
    """A redis-server with `args` added; returned once it answers PING."""
    port = port or ports.free_port()
    home = workdir / f"{name}-{port}"
    home.mkdir(parents=True, exist_ok=True)
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(home), *args]
    if password is not None:
        argv += ["--requirepass", password]
    server = RedisServer(stack.start(f"{name}-{port}", argv, workdir), port, password)
    with server.client(socket_timeout=1) as client:
        _wait_answering(server, client, f"redis-server on {port}")
    return server


def stop_all(servers: Sequence[RedisServer]) -> None:
    for server in servers:
        server.stop()


@dataclass
class Cluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def node_clients(self) -> list[redis.Redis]:
        return [n.client(socket_timeout=2) for n in self.nodes]


@contextmanager
def cluster(workdir: Path, masters: int = 3) -> Iterator[Cluster]:
    """A Redis Cluster of `masters` masters (no replicas), every slot covered."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(masters):
            port = ports.free_port()
            nodes.append(
                start_redis(
                    workdir,
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "3000"),
                    # The bus port, by default the port + 10000, may be taken or above 65535.
                    *("--cluster-port", str(ports.free_port())),
                    *("--cluster-config-file", f"nodes-{port}.conf"),
                    name="cluster",
                    port=port,
                )
            )
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        clients = [n.client(socket_timeout=2) for n in nodes]

        def formed() -> bool:
            for c in clients:
                info = c.cluster("INFO")
                if (
                    info.get("cluster_state") != "ok"
                    or int(info.get("cluster_known_nodes")) != masters
                ):
                    return False
            return True

        wait.wait_until(formed, timeout=30, interval=0.1, what="the cluster to form")
        for c in clients:
            c.close()
        yield Cluster(nodes)
    finally:
        stop_all(nodes)


@dataclass
class SentinelSetup:
    master: RedisServer
    replica: RedisServer
    sentinel: RedisServer
    service: str = "mymaster"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    def master_port(self) -> int:
        with self.sentinel.client(socket_timeout=2) as client:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        return int(port)


@contextmanager
def sentinel(workdir: Path) -> Iterator[SentinelSetup]:
    """A master, one replica, and one Sentinel (quorum 1) watching them as `mymaster`."""
    servers: list[RedisServer] = []
    try:
        master = start_redis(workdir, name="master")
        servers.append(master)
        replica = start_redis(workdir, "--replicaof", "127.0.0.1", str(master.port), name="replica")
        servers.append(replica)
        with replica.client(socket_timeout=1) as c:
            wait.wait_until(
                lambda: c.info("replication").get("master_link_status") == "up",
                timeout=30,
                interval=0.1,
                what="the replica in sync",
            )
        port = ports.free_port()
        conf = workdir / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 2000\n"
            "sentinel failover-timeout mymaster 10000\n"
        )
        proc = stack.start(f"sentinel-{port}", [REDIS_SERVER, str(conf), "--sentinel"], workdir)
        sentinel_server = RedisServer(proc, port)
        servers.append(sentinel_server)
        setup = SentinelSetup(master, replica, sentinel_server)

        def watching() -> bool:
            if not proc.alive():
                raise AssertionError(f"sentinel exited:\n{proc.output()}")
            try:
                with sentinel_server.client(socket_timeout=1) as c:
                    replicas = c.sentinel_slaves("mymaster")
            except redis.RedisError:
                return False
            # Promotable: connected, with its link to the master up (as the Sentinel sees it).
            return len(replicas) == 1 and replicas[0].get("master-link-status") == "ok"

        wait.wait_until(
            watching, timeout=30, interval=0.1, what="the Sentinel to see a promotable replica"
        )
        yield setup
    finally:
        stop_all(list(reversed(servers)))


@dataclass
class TlsRedis:
    server: RedisServer
    ca_file: Path

    def url(self, ca_file: Path | None = None, port: int | None = None) -> str:
        ca = ca_file or self.ca_file
        return f"rediss://127.0.0.1:{port or self.server.port}/0?ssl_ca_certs={ca}"


@contextmanager
def tls_redis(workdir: Path) -> Iterator[TlsRedis]:
    """A redis-server that speaks TLS only, with a certificate for 127.0.0.1 from a CA of its
    own (clients need no certificate)."""
    from tests.support.mtls import Ca  # noqa: PLC0415

    ca = Ca(workdir / "redis-ca", name="redis test CA")
    cert = ca.issue("redis", ips=("127.0.0.1",), client=False)
    port = ports.free_port()
    home = workdir / f"redis-tls-{port}"
    home.mkdir(parents=True, exist_ok=True)
    argv = [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    argv += ["--tls-cert-file", str(cert.cert_file), "--tls-key-file", str(cert.key_file)]
    argv += ["--tls-ca-cert-file", str(ca.ca_file), "--tls-auth-clients", "no"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(home)]
    server = RedisServer(stack.start(f"redis-tls-{port}", argv, workdir), port)
    try:
        with server.client(ssl=True, ssl_ca_certs=str(ca.ca_file), socket_timeout=1) as client:
            _wait_answering(server, client, f"TLS redis-server on {port}")
        yield TlsRedis(server, ca.ca_file)
    finally:
        server.stop()
