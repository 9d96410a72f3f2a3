"""A whole gateway for traffic tests: a catalog of the test's services, the xDS server, a real
Envoy fed by it and (when a route needs it) ext_authz; plus what a test reads from Envoy's admin
(stats, per-endpoint health)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar_shared import defaults
from tests.support import http, stack, wait
from tests.support.catalogs import write_json
from tests.support.upstreams import Upstream

# Envoy's worker threads: each has its own connection pools (and may always open one connection
# per endpoint, whatever the circuit breaker says), so tests fix their number.
WORKERS = 2


@dataclass
class Gateway:
    xds: stack.XdsServer
    envoy: stack.Envoy
    authz: stack.Authz | None
    catalog: Path

    @property
    def url(self) -> str:
        return self.envoy.url

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 30.0,
    ) -> http.Response:
        return http.http(method, self.url + path, headers, body, timeout)

    def timed(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[http.Response, float]:
        """The response and how many seconds it took."""
        start = time.monotonic()
        resp = self.request(method, path, headers)
        return resp, time.monotonic() - start

    def at_once(
        self, n: int, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> list[http.Response]:
        """`n` requests sent together, each on its own connection."""
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: self.request(method, path, headers), range(n)))

    def avoids(self, upstream: Upstream, path: str, n: int = 10) -> bool:
        """Whether `n` GETs to `path` in a row are answered 200 without reaching `upstream`.

        Poll it: a change of health reaches Envoy's workers a moment after its admin shows it."""
        before = upstream.count()
        statuses = [self.request("GET", path).status for _ in range(n)]
        return statuses == [200] * n and upstream.count() == before

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Envoy's counters and gauges whose names start with `prefix`."""
        out = {}
        for line in self.envoy.admin(f"/stats?filter=^{prefix}").body.decode().splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def hosts(self, cluster: str) -> list[dict[str, Any]]:
        """The cluster's endpoints as Envoy's admin `/clusters?format=json` shows them."""
        for c in self.envoy.admin("/clusters?format=json").json()["cluster_statuses"]:
            if c["name"] == cluster:
                hosts: list[dict[str, Any]] = c.get("host_statuses", [])
                return hosts
        return []

    def ejected(self, cluster: str) -> set[int]:
        """Ports of the cluster's endpoints that outlier detection has ejected."""
        return {
            h["address"]["socket_address"]["port_value"]
            for h in self.hosts(cluster)
            if h.get("health_status", {}).get("failed_outlier_check")
        }

    def unhealthy(self, cluster: str) -> set[int]:
        """Ports of the cluster's endpoints that fail active health checks."""
        return {
            h["address"]["socket_address"]["port_value"]
            for h in self.hosts(cluster)
            if h.get("health_status", {}).get("failed_active_health_check")
        }

    def rewrite(self, services: list[dict[str, Any]], roles: Mapping[str, list[str]]) -> None:
        """Save a new catalog and wait until Envoy has ACKed it."""
        before = self.xds.version()
        write_json(self.catalog, {"services": services, "roles": dict(roles)})
        wait.wait_until(lambda: self.xds.version() != before, what="the new catalog served")
        wait.wait_until(lambda: self.xds.synced(self.envoy.node_id), what="Envoy synced")


@contextmanager
def gateway(
    tmp_path: Path,
    services: list[dict[str, Any]],
    *,
    roles: Mapping[str, list[str]] | None = None,
    authz: bool = False,
    xds_args: list[str] | None = None,
    xds_env: Mapping[str, str] | None = None,
    transport: str = defaults.AUTHZ_TRANSPORT,
    authz_env: Mapping[str, str] | None = None,
) -> Iterator[Gateway]:
    """Run a gateway for `services`; with `authz`, ext_authz with the test secret, called over
    `transport`; `xds_env`, `authz_env`: more variables for the xDS server and ext_authz."""
    roles = roles or {"admin": ["*"]}
    catalog = tmp_path / "catalog" / "service_catalog.json"
    catalog.parent.mkdir(exist_ok=True)
    write_json(catalog, {"services": services, "roles": dict(roles)})
    with ExitStack() as stop:
        xds = stack.start_xds(catalog, tmp_path, args=xds_args, env=xds_env, transport=transport)
        stop.callback(xds.proc.stop)
        checker = stack.start_authz(tmp_path, env=authz_env) if authz else None
        if checker is not None:
            stop.callback(checker.proc.stop)
        envoy = stack.start_envoy(xds, tmp_path, authz=checker)
        stop.callback(envoy.proc.stop)
        wait.wait_until(lambda: xds.synced(envoy.node_id), what="Envoy synced")
        yield Gateway(xds, envoy, checker, catalog)


def public(name: str, urls: Any, **fields: Any) -> dict[str, Any]:
    """A service with no token needed (ext_authz is skipped), at /<name>; `urls` is its
    `internal_url`."""
    return {
        "service_name": name,
        "base_path": f"/{name}",
        "internal_url": urls,
        "public": True,
        "rbac_required": False,
        **fields,
    }


def guarded(name: str, urls: Any, **fields: Any) -> dict[str, Any]:
    """A service behind tokens (ext_authz with RBAC), at /<name>."""
    return {"service_name": name, "base_path": f"/{name}", "internal_url": urls, **fields}
