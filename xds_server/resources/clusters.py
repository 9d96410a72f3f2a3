"""Clusters and their endpoints: one cluster per service (and per tenant upstream), EDS for IP
addresses, DNS for host names."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    base_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from xds_server.catalog import Service, Upstream
from xds_server.resources.common import (
    ADS_SOURCE,
    pack,
    set_ms,
)


def uses_dns(ups: list[Upstream]) -> bool:
    """Hostnames need DNS resolution by Envoy; EDS takes only IP addresses."""
    return not all(u.is_ip for u in ups)


def tenant_cluster_name(service: str, tenant: str) -> str:
    # Service names cannot hold '.', so this never collides with a service's own cluster.
    return f"{service}.{tenant}"


def load_assignment(name: str, ups: list[Upstream]) -> endpoint_pb2.ClusterLoadAssignment:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    locality = out.endpoints.add()
    for u in ups:
        address = locality.lb_endpoints.add().endpoint.address.socket_address
        address.address = u.host
        address.port_value = u.port
    return out


def cluster(svc: Service, ups: list[Upstream], name: str | None = None) -> cluster_pb2.Cluster:
    """The cluster for a service's upstreams (`name` defaults to the service's name)."""
    name = name or svc.service_name
    # Fields are set in place: nested constructor arguments would copy each subtree again.
    out = cluster_pb2.Cluster(name=name, lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
    set_ms(out.connect_timeout, svc.connect_timeout_ms)
    # A host the catalog no longer lists leaves at once, even while it passes health checks
    # (otherwise Envoy keeps it as pending_dynamic_removal and keeps sending it traffic).
    out.ignore_health_on_host_removal = True
    # No panic mode: with no healthy endpoint the service answers 503 at once (Envoy's default
    # 50 % threshold would send traffic to endpoints known to be down).
    out.common_lb_config.healthy_panic_threshold.value = 0
    # Health changes reach the workers at once (Envoy merges them for 1 s by default), so what
    # `sidecar status` shows is what traffic sees.
    out.common_lb_config.update_merge_window.SetInParent()
    cb = svc.circuit_breaker
    thresholds = out.circuit_breakers.thresholds.add(priority=base_pb2.RoutingPriority.DEFAULT)
    thresholds.max_connections.value = cb.max_connections
    thresholds.max_pending_requests.value = cb.max_pending_requests
    thresholds.max_requests.value = cb.max_requests
    thresholds.max_retries.value = cb.max_retries
    od = svc.outlier_detection
    outlier = out.outlier_detection
    outlier.consecutive_5xx.value = od.consecutive_5xx
    outlier.consecutive_gateway_failure.value = od.consecutive_gateway_failure
    # Envoy enforces gateway-failure ejections 0 % of the time unless told otherwise.
    outlier.enforcing_consecutive_gateway_failure.value = 100
    set_ms(outlier.interval, od.interval_ms)
    set_ms(outlier.base_ejection_time, od.base_ejection_time_ms)
    outlier.max_ejection_percent.value = od.max_ejection_percent
    if uses_dns(ups):
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(load_assignment(name, ups))
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ADS_SOURCE)
        out.eds_cluster_config.service_name = name
    if svc.healthcheck_endpoint is not None:
        hc = svc.health_check
        check = out.health_checks.add()
        set_ms(check.timeout, hc.timeout_ms)
        set_ms(check.interval, hc.interval_ms)
        # Without traffic Envoy would check only once a minute.
        set_ms(check.no_traffic_interval, hc.interval_ms)
        check.unhealthy_threshold.value = hc.unhealthy_threshold
        check.healthy_threshold.value = hc.healthy_threshold
        check.http_health_check.path = svc.healthcheck_endpoint
        # Healthy on 200-399 (as Kubernetes probes); any other answer counts towards
        # unhealthy_threshold like a timeout does (Envoy would otherwise eject at the first).
        check.http_health_check.expected_statuses.add(start=200, end=400)
        check.http_health_check.retriable_statuses.add(start=100, end=200)
        check.http_health_check.retriable_statuses.add(start=400, end=600)
    tls_hosts = [u for u in ups if u.tls]
    if tls_hosts:
        out.transport_socket.name = "envoy.transport_sockets.tls"
        out.transport_socket.typed_config.CopyFrom(
            pack(tls_pb2.UpstreamTlsContext(sni=tls_hosts[0].host))
        )
    return out
