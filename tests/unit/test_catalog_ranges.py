"""Every number in the catalog has a range that fits the Envoy field it becomes.

The models are walked through their JSON Schema, so a new integer field without a table entry
below, or without an upper bound, fails here before it can fail inside protobuf at reload time.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.support.catalog_edges import bounds, extreme_catalog, integer_properties
from xds_server.catalog import CatalogError, parse_catalog

UINT32_MAX = 2**32 - 1
# Envoy turns Durations into milliseconds in several integer types; stay within int32 ms.
DURATION_MS_MAX = 2**31 - 1
# Rate-limit numbers never reach Envoy; Redis' Lua holds them as doubles (exact to 2**53).
LUA_EXACT_MAX = 2**53

_THRESHOLDS = circuit_breaker_pb2.CircuitBreakers.Thresholds
_OUTLIER = outlier_detection_pb2.OutlierDetection
_HC = health_check_pb2.HealthCheck
_RETRY = route_components_pb2.RetryPolicy

# (schema definition, property) → (Envoy message, field), or None for numbers only ext_authz uses.
ENVOY_FIELD: dict[tuple[str, str], tuple[type[Message], str] | None] = {
    ("Service", "timeout_ms"): (route_components_pb2.RouteAction, "timeout"),
    ("ServiceEndpoint", "timeout_ms"): (route_components_pb2.RouteAction, "timeout"),
    ("Service", "connect_timeout_ms"): (cluster_pb2.Cluster, "connect_timeout"),
    ("RetryPolicy", "max_retries"): (_RETRY, "num_retries"),
    ("RetryPolicy", "per_try_timeout_ms"): (_RETRY, "per_try_timeout"),
    ("RetryPolicy", "backoff_base_ms"): (_RETRY.RetryBackOff, "base_interval"),
    ("RetryPolicy", "backoff_max_ms"): (_RETRY.RetryBackOff, "max_interval"),
    ("HealthCheck", "interval_ms"): (_HC, "interval"),
    ("HealthCheck", "timeout_ms"): (_HC, "timeout"),
    ("HealthCheck", "healthy_threshold"): (_HC, "healthy_threshold"),
    ("HealthCheck", "unhealthy_threshold"): (_HC, "unhealthy_threshold"),
    ("OutlierDetection", "consecutive_5xx"): (_OUTLIER, "consecutive_5xx"),
    ("OutlierDetection", "consecutive_gateway_failure"): (_OUTLIER, "consecutive_gateway_failure"),
    ("OutlierDetection", "interval_ms"): (_OUTLIER, "interval"),
    ("OutlierDetection", "base_ejection_time_ms"): (_OUTLIER, "base_ejection_time"),
    ("OutlierDetection", "max_ejection_percent"): (_OUTLIER, "max_ejection_percent"),
    ("OutlierDetection", "consecutive_local_origin_failure"): (
        _OUTLIER,
        "consecutive_local_origin_failure",
    ),
    ("Service", "overprovisioning_factor"): (
        endpoint_pb2.ClusterLoadAssignment.Policy,
        "overprovisioning_factor",
    ),
    ("CircuitBreaker", "max_connections"): (_THRESHOLDS, "max_connections"),
    ("CircuitBreaker", "max_pending_requests"): (_THRESHOLDS, "max_pending_requests"),
    ("CircuitBreaker", "max_requests"): (_THRESHOLDS, "max_requests"),
    ("CircuitBreaker", "max_retries"): (_THRESHOLDS, "max_retries"),
    ("Service", "max_request_body_bytes"): (buffer_pb2.Buffer, "max_request_bytes"),
    # 0 leaves the endpoint out; Envoy gets 1 and above.
    ("Endpoint", "weight"): (endpoint_components_pb2.LbEndpoint, "load_balancing_weight"),
    ("RateLimit", "requests_per_second"): None,
    ("RateLimit", "requests_per_minute"): None,
    ("RateLimit", "requests_per_hour"): None,
    ("RateLimit", "burst"): None,
}


def envoy_max(message: type[Message], field: str) -> int:
    descriptor: Descriptor = message.DESCRIPTOR
    fd: FieldDescriptor = descriptor.fields_by_name[field]
    if fd.message_type is None:
        assert fd.type == FieldDescriptor.TYPE_UINT32, f"{message}.{field}: unexpected type"
        return UINT32_MAX
    name = fd.message_type.full_name
    if name == "google.protobuf.UInt32Value":
        return UINT32_MAX
    if name == "google.protobuf.Duration":
        return DURATION_MS_MAX
    if name == "envoy.type.v3.Percent":
        return 100
    raise AssertionError(f"{message.DESCRIPTOR.full_name}.{field}: unmapped type {name}")


def test_every_integer_field_is_mapped_to_where_it_goes() -> None:
    found = {(d, p) for d, p, _ in integer_properties()}
    assert found == set(ENVOY_FIELD), "add new integer fields to ENVOY_FIELD"


@pytest.mark.parametrize(
    ("definition", "prop", "schema"),
    list(integer_properties()),
    ids=[f"{d}.{p}" for d, p, _ in integer_properties()],
)
def test_every_integer_field_has_a_range_that_fits_its_envoy_field(
    definition: str, prop: str, schema: dict[str, Any]
) -> None:
    assert "minimum" in schema or "exclusiveMinimum" in schema, "no lower bound"
    assert "maximum" in schema or "exclusiveMaximum" in schema, "no upper bound"
    low, high = bounds(schema)
    assert low >= 0
    target = ENVOY_FIELD[(definition, prop)]
    limit = LUA_EXACT_MAX if target is None else envoy_max(*target)
    assert high <= limit, f"{definition}.{prop} allows {high}, its Envoy field holds {limit}"


@pytest.mark.parametrize(
    ("definition", "prop", "schema"),
    list(integer_properties()),
    ids=[f"{d}.{p}" for d, p, _ in integer_properties()],
)
def test_one_past_the_highest_value_is_an_error_naming_the_field(
    definition: str, prop: str, schema: dict[str, Any]
) -> None:
    data = extreme_catalog(1)
    service = data["services"][0]
    section = {
        "Service": service,
        "RetryPolicy": service["retry_policy"],
        "RateLimit": service["rate_limit"],
        "HealthCheck": service["health_check"],
        "OutlierDetection": service["outlier_detection"],
        "CircuitBreaker": service["circuit_breaker"],
        "Endpoint": service["internal_url"][0],
        "ServiceEndpoint": service["endpoints"][0],
    }[definition]
    if prop.startswith("requests_per_"):  # exactly one rate may be given
        del section["requests_per_second"]
    section[prop] = bounds(schema)[1] + 1
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    where = {
        "Service": "services[0]",
        "RetryPolicy": "services[0].retry_policy",
        "RateLimit": "services[0].rate_limit",
        "HealthCheck": "services[0].health_check",
        "OutlierDetection": "services[0].outlier_detection",
        "CircuitBreaker": "services[0].circuit_breaker",
        "Endpoint": "services[0].internal_url[0]",
        "ServiceEndpoint": "services[0].endpoints[0]",
    }[definition]
    paths = [p.path for p in caught.value.problems]
    assert f"{where}.{prop}" in paths, paths


@pytest.mark.parametrize("value", [2**32, 2**64, 10**400])
def test_a_huge_circuit_breaker_value_is_a_path_error(value: int) -> None:
    data = extreme_catalog(1)
    data["services"][0]["circuit_breaker"]["max_connections"] = value
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    (problem,) = caught.value.problems
    assert problem.path == "services[0].circuit_breaker.max_connections"
    assert "at most 4294967295" in problem.message
