"""Clusters and their endpoints: one cluster per service (and per tenant upstream and API
version), EDS for IP addresses, DNS for host names; endpoints weighted and, by region, in
priorities for failover."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    base_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.health_check.event_sinks.file.v3 import file_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2 as http_types_pb2

from xds_server.catalog import Service, Upstream
from xds_server.resources.common import (
    ADS_SOURCE,
    pack,
    set_ms,
)
from xds_server.resources.tls import DEFAULT_SDS_DIR, upstream_tls

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DEFAULT_OVERPROVISIONING = Service.model_fields["overprovisioning_factor"].default


def uses_dns(ups: list[Upstream]) -> bool:
    """Hostnames need DNS resolution by Envoy; EDS takes only IP addresses."""
    return not all(u.is_ip for u in ups)


def tenant_cluster_name(service: str, tenant: str) -> str:
    # Service names cannot hold '.', so this never collides with a service's own cluster.
    return f"{service}.{tenant}"


def service_of_cluster(name: str) -> str:
    """The service a cluster belongs to: its name up to the first '.' (a tenant's) or '@' (a
    version's); service names hold neither."""
    return name.split("@", 1)[0].split(".", 1)[0]


def version_cluster_name(service: str, version: str) -> str:
    # '@' is in no service, tenant or version name, so this never collides.
    return f"{service}@{version}"


def service_clusters(svc: Service) -> list[tuple[str, list[Upstream]]]:
    """Every cluster a service needs, by name: its own, one per tenant upstream, one per API
    version."""
    out = [(svc.service_name, svc.upstreams)]
    out += [
        (tenant_cluster_name(svc.service_name, t), svc.tenant_upstreams_of(t))
        for t in sorted(svc.tenant_upstreams)
    ]
    out += [
        (version_cluster_name(svc.service_name, v), svc.version_upstreams_of(v))
        for v in sorted(svc.versions)
    ]
    return out


def priorities(ups: Sequence[Upstream], preference: Sequence[str]) -> list[int]:
    """Each endpoint's priority: endpoints in the first preferred region come first, then the
    next one's, then every other region; without regions, all the same. Numbered from 0 without
    gaps, as Envoy requires."""
    rank = {region: i for i, region in enumerate(preference)}
    raw = [
        len(preference) if u.region is None else rank.get(u.region, len(preference)) for u in ups
    ]
    order = sorted(set(raw))
    return [order.index(r) for r in raw]


def load_assignment(
    name: str,
    ups: list[Upstream],
    regions: Sequence[str] = (),
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING,
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by priority and region; weight-0 endpoints are left out. A priority
    keeps min(100 %, its healthy share x `overprovisioning_factor` / 100) of the traffic; the
    next one takes the rest."""
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    out.policy.overprovisioning_factor.value = overprovisioning_factor
    live = [u for u in ups if u.weight > 0]
    groups: dict[tuple[int, str], Any] = {}
    ranked = zip(priorities(live, regions), live, strict=True)
    for priority, u in sorted(ranked, key=lambda pu: (pu[0], pu[1].region or "")):
        key = (priority, u.region or "")
        group = groups.get(key)
        if group is None:
            group = groups[key] = out.endpoints.add()
            if priority:
                group.priority = priority
            if u.region is not None:
                group.locality.region = u.region
        endpoint = group.lb_endpoints.add()
        address = endpoint.endpoint.address.socket_address
        address.address = u.host
        address.port_value = u.port
        if u.weight != 1:
            endpoint.load_balancing_weight.value = u.weight
    return out


def cluster(
    svc: Service,
    ups: list[Upstream],
    name: str | None = None,
    regions: Sequence[str] = (),
    sds_dir: str = DEFAULT_SDS_DIR,
    health_event_log: str = "",
) -> cluster_pb2.Cluster:
    """The cluster for a service's upstreams (`name` defaults to the service's name; `sds_dir`
    holds the SDS files of its `tls`; `health_event_log`: the file its health checks' events go
    to, `add_event_log`)."""
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
    _set_outlier_detection(out, svc)
    if uses_dns(ups):
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(
            load_assignment(name, ups, regions, svc.overprovisioning_factor)
        )
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ADS_SOURCE)
        out.eds_cluster_config.service_name = name
    if svc.healthcheck_endpoint is not None:
        _add_health_check(out, svc, svc.healthcheck_endpoint)
        if health_event_log:
            add_event_log(out, health_event_log)
    _set_protocol(out, svc, ups, sds_dir)
    return out


def _set_outlier_detection(out: cluster_pb2.Cluster, svc: Service) -> None:
    od = svc.outlier_detection
    outlier = out.outlier_detection
    # Answers the upstream gave (5xx, gateway failures) and errors Envoy met itself (timeouts,
    # resets, refused connections) counted apart: a hung endpoint answers nothing, and its
    # timeouts eject it after `consecutive_local_origin_failure` of them in a row.
    outlier.split_external_local_origin_errors = True
    outlier.consecutive_local_origin_failure.value = od.consecutive_local_origin_failure
    outlier.enforcing_consecutive_local_origin_failure.value = 100
    outlier.consecutive_5xx.value = od.consecutive_5xx
    outlier.consecutive_gateway_failure.value = od.consecutive_gateway_failure
    # Envoy enforces gateway-failure ejections 0 % of the time unless told otherwise.
    outlier.enforcing_consecutive_gateway_failure.value = 100
    # An ejection stands for its time: Envoy's default re-admits an ejected endpoint at its next
    # passing health check, so a shallow health endpoint would undo every ejection.
    outlier.successful_active_health_check_uneject_host.value = False
    set_ms(outlier.interval, od.interval_ms)
    set_ms(outlier.base_ejection_time, od.base_ejection_time_ms)
    outlier.max_ejection_percent.value = od.max_ejection_percent


def _add_health_check(out: cluster_pb2.Cluster, svc: Service, endpoint: str) -> None:
    hc = svc.health_check
    check = out.health_checks.add()
    set_ms(check.timeout, hc.timeout_ms)
    set_ms(check.interval, hc.interval_ms)
    # Without traffic Envoy would check only once a minute.
    set_ms(check.no_traffic_interval, hc.interval_ms)
    check.unhealthy_threshold.value = hc.unhealthy_threshold
    check.healthy_threshold.value = hc.healthy_threshold
    if svc.protocol == "grpc":
        # grpc.health.v1 on the service the path names ("/" is the whole server).
        check.grpc_health_check.service_name = endpoint.strip("/")
        return
    http = check.http_health_check
    http.path = endpoint
    if svc.protocol == "http2":
        http.codec_client_type = http_types_pb2.HTTP2
    # Healthy on 200-399 (as Kubernetes probes); any other answer counts towards
    # unhealthy_threshold like a timeout does (Envoy would otherwise eject at the first).
    http.expected_statuses.add(start=200, end=400)
    http.retriable_statuses.add(start=100, end=200)
    http.retriable_statuses.add(start=400, end=600)


HEALTH_EVENT_SINK = "envoy.health_check.event_sinks.file"


def add_event_log(out: cluster_pb2.Cluster, path: str) -> None:
    """Envoy appends each health-check event of `out` to `path` as a JSON line (it creates the
    file; `health_events` reads it)."""
    sink = file_pb2.HealthCheckEventFileSink(event_log_path=path)
    for check in out.health_checks:
        check.event_logger.add(name=HEALTH_EVENT_SINK).typed_config.Pack(sink)


def _set_protocol(
    out: cluster_pb2.Cluster, svc: Service, ups: list[Upstream], sds_dir: str
) -> None:
    """HTTP/2 for `http2` and `grpc` (cleartext, or TLS with ALPN h2); TLS for https URLs."""
    h2 = svc.protocol in ("http2", "grpc")
    if h2:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    tls_hosts = [u for u in ups if u.tls]
    if tls_hosts:
        first = tls_hosts[0]
        out.transport_socket.CopyFrom(upstream_tls(svc, first.host, first.is_ip, h2, sds_dir))
