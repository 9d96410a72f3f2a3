"""Envoy's OpenTelemetry tracer speaks the protocol our servers export with: OTLP gRPC over an
HTTP/2 cluster, or OTLP HTTP (a POST to the collector's path) over HTTP/1.1."""

from __future__ import annotations

from typing import Any

from envoy.config.trace.v3 import opentelemetry_pb2

from xds_server.resources import observability
from xds_server.resources.common import TracingOptions


def provider_of(options: TracingOptions) -> Any:
    config = opentelemetry_pb2.OpenTelemetryConfig()
    observability.tracing(options).provider.typed_config.Unpack(config)
    return config


def test_grpc_goes_to_the_collector_cluster_over_http2() -> None:
    options = TracingOptions("collector", 4317)
    config = provider_of(options)
    assert config.grpc_service.envoy_grpc.cluster_name == observability.COLLECTOR_CLUSTER
    assert not config.HasField("http_service")
    cluster = observability.collector_cluster(options)
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )


def test_http_posts_to_the_collectors_path_over_http1() -> None:
    options = TracingOptions("collector", 4318, protocol="http/protobuf", path="/otlp/v1/traces")
    config = provider_of(options)
    assert not config.HasField("grpc_service")
    assert config.http_service.http_uri.uri == "http://collector:4318/otlp/v1/traces"
    assert config.http_service.http_uri.cluster == observability.COLLECTOR_CLUSTER
    cluster = observability.collector_cluster(options)
    assert not cluster.typed_extension_protocol_options
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "collector",
        4318,
    )
