"""Per service and endpoint, the health one Envoy sees: read from its admin `/clusters`.

The xDS server knows which Envoys are connected but not where their admin interfaces listen (it
is on loopback by default), so `sidecar status` asks one Envoy's admin directly
(`--envoy-admin`, by default the address `sidecar up` gives it).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from envoy.admin.v3 import clusters_pb2
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format

from xds_server.resources.clusters import service_of_cluster
from xds_server.resources.http_cache import SIDE

_EDS_FINE = (health_check_pb2.HEALTHY, health_check_pb2.UNKNOWN)


@dataclass(frozen=True)
class EndpointHealth:
    service: str
    cluster: str  # the service's, a tenant's (`orders.acme`) or a version's (`orders@v2`)
    address: str  # host:port
    health: str  # HEALTHY, UNHEALTHY, EJECTED, PENDING or DRAINING
    reasons: tuple[str, ...]
    weight: int
    region: str
    priority: int

    @property
    def healthy(self) -> bool:
        return self.health == "HEALTHY"


# Envoy's flags on a host, and what each means for the operator.
_FLAGS = (
    ("failed_active_health_check", "fails its health check"),
    ("active_hc_timeout", "its health check timed out"),
    ("failed_outlier_check", "ejected by outlier detection"),
    ("pending_active_hc", "waiting for its first health check"),
    ("pending_dynamic_removal", "being removed"),
    (
        "excluded_via_immediate_hc_fail",
        "asked to be taken out (x-envoy-immediate-health-check-fail)",
    ),
)


def _reasons(status: clusters_pb2.HostHealthStatus) -> tuple[str, ...]:
    out = [why for flag, why in _FLAGS if getattr(status, flag)]
    if status.eds_health_status not in _EDS_FINE:
        name = health_check_pb2.HealthStatus.Name(status.eds_health_status)
        out.append(f"the control plane says {name}")
    return tuple(out)


def _health(status: clusters_pb2.HostHealthStatus, reasons: tuple[str, ...]) -> str:
    if not reasons:
        return "HEALTHY"
    if status.eds_health_status == health_check_pb2.DRAINING:
        return "DRAINING"
    if status.failed_active_health_check or status.active_hc_timeout:
        return "UNHEALTHY"
    if status.failed_outlier_check:
        return "EJECTED"
    if status.pending_active_hc:
        return "PENDING"
    return "UNHEALTHY"


def read(clusters: clusters_pb2.Clusters) -> list[EndpointHealth]:
    """Every endpoint of the catalog's clusters (those Envoy got over xDS), by service."""
    out = []
    for c in clusters.cluster_statuses:
        if not c.added_via_api or c.name == SIDE:
            continue
        for host in c.host_statuses:
            address = host.address.socket_address
            reasons = _reasons(host.health_status)
            out.append(
                EndpointHealth(
                    service=service_of_cluster(c.name),
                    cluster=c.name,
                    address=f"{address.address}:{address.port_value}",
                    health=_health(host.health_status, reasons),
                    reasons=reasons,
                    weight=host.weight,
                    region=host.locality.region,
                    priority=host.priority,
                )
            )
    return sorted(out, key=lambda e: (e.service, e.cluster, e.priority, e.address))


def fetch(admin: str, timeout: float = 5.0) -> clusters_pb2.Clusters:
    """`/clusters?format=json` from the Envoy admin at host:port; raises OSError or ValueError."""
    url = f"http://{admin}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return json_format.Parse(body, clusters_pb2.Clusters(), ignore_unknown_fields=True)


def without_healthy(endpoints: list[EndpointHealth]) -> list[str]:
    """Services none of whose own endpoints is healthy: they answer 503."""
    services = {e.service for e in endpoints}
    healthy = {e.service for e in endpoints if e.healthy and e.cluster == e.service}
    return sorted(services - healthy)


def lines(endpoints: list[EndpointHealth]) -> list[str]:
    out = []
    service = None
    for e in endpoints:
        if e.service != service:
            service = e.service
            out.append(f"  {service}")
        where = f"  {e.region} (priority {e.priority})" if e.region else ""
        weight = f"  weight {e.weight}" if e.weight != 1 else ""
        why = f"  {'; '.join(e.reasons)}" if e.reasons else ""
        out.append(
            f"    {e.cluster:<16} {e.address:<22} {e.health:<9}{weight}{where}{why}".rstrip()
        )
    return out
