"""`sidecar status` reads per-endpoint health from Envoy's admin `/clusters` answer."""

from __future__ import annotations

from envoy.admin.v3 import clusters_pb2
from envoy.config.core.v3 import health_check_pb2

from sidecar import endpoints


def host(
    cluster: clusters_pb2.ClusterStatus, port: int, region: str = "", **flags: bool
) -> clusters_pb2.HostStatus:
    out = cluster.host_statuses.add(weight=1)
    out.address.socket_address.address = "10.0.0.1"
    out.address.socket_address.port_value = port
    out.locality.region = region
    out.health_status.eds_health_status = health_check_pb2.HEALTHY
    for name, value in flags.items():
        setattr(out.health_status, name, value)
    return out


def sample() -> clusters_pb2.Clusters:
    out = clusters_pb2.Clusters()
    orders = out.cluster_statuses.add(name="orders", added_via_api=True)
    host(orders, 1, "eu")
    host(orders, 2, "eu", failed_active_health_check=True)
    host(orders, 3, "us", failed_outlier_check=True).priority = 1
    host(out.cluster_statuses.add(name="orders@v2", added_via_api=True), 4)
    host(out.cluster_statuses.add(name="catalog", added_via_api=True), 5, pending_active_hc=True)
    host(out.cluster_statuses.add(name="ext_authz"), 9191)  # the bootstrap's, not the catalog's
    host(out.cluster_statuses.add(name="sidecar_cache_side", added_via_api=True), 1)
    return out


def test_each_catalog_endpoint_with_its_health_and_why() -> None:
    seen = {(e.cluster, e.address): e for e in endpoints.read(sample())}
    assert set(seen) == {
        ("orders", "10.0.0.1:1"),
        ("orders", "10.0.0.1:2"),
        ("orders", "10.0.0.1:3"),
        ("orders@v2", "10.0.0.1:4"),
        ("catalog", "10.0.0.1:5"),
    }
    assert seen["orders", "10.0.0.1:1"].health == "HEALTHY"
    assert seen["orders", "10.0.0.1:2"].health == "UNHEALTHY"
    assert seen["orders", "10.0.0.1:2"].reasons == ("fails its health check",)
    ejected = seen["orders", "10.0.0.1:3"]
    assert (ejected.health, ejected.region, ejected.priority) == ("EJECTED", "us", 1)
    assert seen["orders@v2", "10.0.0.1:4"].service == "orders"
    assert seen["catalog", "10.0.0.1:5"].health == "PENDING"


def test_a_service_with_no_healthy_endpoint_of_its_own_is_named() -> None:
    assert endpoints.without_healthy(endpoints.read(sample())) == ["catalog"]


def test_draining_is_told_apart() -> None:
    out = clusters_pb2.Clusters()
    h = host(out.cluster_statuses.add(name="a", added_via_api=True), 1)
    h.health_status.eds_health_status = health_check_pb2.DRAINING
    (e,) = endpoints.read(out)
    assert e.health == "DRAINING"
    assert e.reasons == ("the control plane says DRAINING",)
