"""What every resource builder shares: the translation's options, names Envoy and our tests
refer to, and small helpers. Messages are built in place (nested constructor arguments would
copy each subtree again) and packed deterministically, so the same catalog always gives the
same bytes."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3 import (
    config_source_pb2,
)
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2 as previous_priorities_pb2,
)
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from sidecar_shared import defaults
from sidecar_shared.contract import (
    AUTHZ_CLUSTER,
)
from xds_server.engines import EngineOptions
from xds_server.resources.tls import DEFAULT_SDS_DIR, ListenerTls

LISTENER_NAME = "ingress_http"
ROUTE_CONFIG_NAME = "ingress_routes"
CACHE_FILTER = "envoy.filters.http.cache"
AUTHZ_FILTER = "envoy.filters.http.ext_authz"
HEADER_MUTATION_FILTER = "envoy.filters.http.header_mutation"
METHOD_OVERRIDE_FILTER = "sidecar.strip_method_override"
BUFFER_FILTER = "envoy.filters.http.buffer"


@dataclass(frozen=True)
class AuthzOptions:
    """How Envoy calls ext_authz. The cluster is defined in Envoy's bootstrap."""

    cluster: str = AUTHZ_CLUSTER
    timeout_ms: int = defaults.AUTHZ_TIMEOUT_MS
    # answered when ext_authz cannot be reached (fail closed)
    failure_status: int = defaults.AUTHZ_FAILURE_STATUS
    # "grpc" or "http": which of ext_authz's servers Envoy calls (the bootstrap's cluster agrees)
    transport: str = defaults.AUTHZ_TRANSPORT
    # the MAC key of route policies (`sidecar_shared.contract.sign`); empty: policies unsigned,
    # which ext_authz refuses
    policy_key: bytes = field(default=b"", repr=False)
    # Which engine decides each route (`xds_server.engines`); ext_authz for every route here.
    engines: EngineOptions = field(default_factory=EngineOptions)


@dataclass(frozen=True)
class EdgeOptions:
    """The listener's edge-proxy limits (defaults and reasons in `sidecar_shared.defaults`)."""

    request_headers_timeout_ms: int = defaults.EDGE_REQUEST_HEADERS_TIMEOUT_MS
    stream_idle_timeout_ms: int = defaults.EDGE_STREAM_IDLE_TIMEOUT_MS
    request_timeout_ms: int = defaults.EDGE_REQUEST_TIMEOUT_MS
    idle_timeout_ms: int = defaults.EDGE_IDLE_TIMEOUT_MS
    h2_max_concurrent_streams: int = defaults.EDGE_H2_MAX_CONCURRENT_STREAMS
    h2_stream_window_bytes: int = defaults.EDGE_H2_STREAM_WINDOW_BYTES
    h2_connection_window_bytes: int = defaults.EDGE_H2_CONNECTION_WINDOW_BYTES
    connection_buffer_bytes: int = defaults.EDGE_CONNECTION_BUFFER_BYTES
    max_request_headers: int = defaults.EDGE_MAX_REQUEST_HEADERS
    underscore_headers: str = defaults.EDGE_UNDERSCORE_HEADERS  # "reject" or "drop"


@dataclass(frozen=True)
class TracingOptions:
    """Envoy's OpenTelemetry tracer: where spans go (the collector our servers export to) and
    the share of requests that start a trace (a client's sampled `traceparent` always does)."""

    collector_host: str
    collector_port: int
    sampling_percent: float = defaults.ENVOY_TRACE_SAMPLING_PERCENT
    service_name: str = "envoy"
    protocol: str = "grpc"  # or "http/protobuf" (OTLP over HTTP, POSTed to `path`)
    path: str = "/v1/traces"


@dataclass(frozen=True)
class ObservabilityOptions:
    access_log: str = defaults.ACCESS_LOG  # "-" stdout, "off", or a file path
    tracing: TracingOptions | None = None
    health_event_log: str = ""  # Envoy's health-check event log file ("": none)


@dataclass(frozen=True)
class Options:
    """What the translation needs besides the catalog; built once from the server's settings."""

    listener_address: str = defaults.LISTENER_ADDRESS
    listener_port: int = defaults.LISTENER_PORT
    authz: AuthzOptions = AuthzOptions()
    edge: EdgeOptions = EdgeOptions()
    observability: ObservabilityOptions = ObservabilityOptions()
    # Where the Envoys run, then the failover order: endpoints in the first region are preferred
    # (priority 0), then the next one's, then any other region's. Empty: no preference.
    regions: tuple[str, ...] = ()
    # HTTPS on the listener (None: plain HTTP), where the SDS files naming the PEM files are,
    # and a plain-HTTP port that redirects to HTTPS (0: none). See `resources.tls`.
    listener_tls: ListenerTls | None = None
    sds_dir: str = DEFAULT_SDS_DIR
    http_redirect_port: int = 0


def pack(msg: Message) -> any_pb2.Any:
    return any_pb2.Any(
        type_url="type.googleapis.com/" + msg.DESCRIPTOR.full_name,
        value=msg.SerializeToString(deterministic=True),
    )


# Messages that are the same on every route; CopyFrom copies them into place.
PREVIOUS_HOSTS = route_components_pb2.RetryPolicy.RetryHostPredicate(
    name="envoy.retry_host_predicates.previous_hosts",
    typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
)
# Every retry leaves the priorities (regions) already tried, while another one has endpoints.
PREVIOUS_PRIORITIES = route_components_pb2.RetryPolicy.RetryPriority(
    name="envoy.retry_priorities.previous_priorities",
    typed_config=pack(previous_priorities_pb2.PreviousPrioritiesConfig(update_frequency=1)),
)
FILTER_DISABLED = pack(route_components_pb2.FilterConfig(disabled=True))


ADS_SOURCE = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.ApiVersion.V3,
)


def set_ms(field: duration_pb2.Duration, ms: int) -> None:
    field.seconds = ms // 1000
    field.nanos = (ms % 1000) * 1_000_000
