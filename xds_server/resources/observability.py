"""What Envoy tells operators about each request: a JSON access log line, and spans to the
OpenTelemetry collector our servers export to (one trace: Envoy → ext_authz → upstream).

Access log lines carry the same `request_id` as ext_authz's audit line and the upstream's
`x-request-id`, and the trace id; never a query string (which may hold a token) or a header
value a client chose beyond the user agent.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from xds_server.resources.common import ObservabilityOptions, TracingOptions, pack, set_ms

# A name no service's cluster can take (service names start with a letter or digit).
COLLECTOR_CLUSTER = "_otel_collector"

ACCESS_LOG_FIELDS: dict[str, str] = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "trace_id": "%TRACE_ID%",
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(NQ)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "service": "%UPSTREAM_CLUSTER%",
    "upstream": "%UPSTREAM_HOST%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def access_logs(
    options: ObservabilityOptions, extra: Mapping[str, str] | None = None
) -> list[accesslog_pb2.AccessLog]:
    """The access log, with `extra` fields (the native engine's audit fields) after ours."""
    if options.access_log == "off":
        return []
    if options.access_log == "-":
        config: stream_pb2.StdoutAccessLog | file_pb2.FileAccessLog = stream_pb2.StdoutAccessLog()
        name = "envoy.access_loggers.stdout"
    else:
        config = file_pb2.FileAccessLog(path=options.access_log)
        name = "envoy.access_loggers.file"
    fields = config.log_format.json_format.fields
    for key, command in {**ACCESS_LOG_FIELDS, **(extra or {})}.items():
        fields[key].string_value = command
    config.log_format.omit_empty_values = True
    return [accesslog_pb2.AccessLog(name=name, typed_config=pack(config))]


def tracing(options: TracingOptions) -> hcm_pb2.HttpConnectionManager.Tracing:
    """Envoy's OpenTelemetry tracer, over OTLP gRPC or OTLP HTTP as our servers export
    (`OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`)."""
    provider = opentelemetry_pb2.OpenTelemetryConfig(service_name=options.service_name)
    if options.protocol == "http/protobuf":
        uri = provider.http_service.http_uri
        uri.uri = f"http://{options.collector_host}:{options.collector_port}{options.path}"
        uri.cluster = COLLECTOR_CLUSTER
        set_ms(uri.timeout, 1000)
    else:
        provider.grpc_service.envoy_grpc.cluster_name = COLLECTOR_CLUSTER
        set_ms(provider.grpc_service.timeout, 1000)
    out = hcm_pb2.HttpConnectionManager.Tracing()
    out.spawn_upstream_span.value = True
    out.provider.name = "envoy.tracers.opentelemetry"
    out.provider.typed_config.CopyFrom(pack(provider))
    out.random_sampling.value = options.sampling_percent
    return out


def collector_cluster(options: TracingOptions) -> cluster_pb2.Cluster:
    """The OTLP collector, resolved by Envoy (a name or an address): HTTP/2 for gRPC, HTTP/1.1
    for OTLP over HTTP (what every collector's 4318 speaks)."""
    out = cluster_pb2.Cluster(name=COLLECTOR_CLUSTER, type=cluster_pb2.Cluster.STRICT_DNS)
    set_ms(out.connect_timeout, 1000)
    out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if options.protocol != "http/protobuf":
        protocol = http_protocol_options_pb2.HttpProtocolOptions()
        protocol.explicit_http_config.http2_protocol_options.SetInParent()
        out.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].CopyFrom(pack(protocol))
    endpoint = out.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    out.load_assignment.cluster_name = COLLECTOR_CLUSTER
    endpoint.address.socket_address.address = options.collector_host
    endpoint.address.socket_address.port_value = options.collector_port
    return out
