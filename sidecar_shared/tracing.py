"""OpenTelemetry for our servers, configured the standard way (`OTEL_*` variables) and off
unless an OTLP endpoint is set: `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (`OTEL_SDK_DISABLED=true` turns it off again). The sampler,
headers, timeouts and service name follow the SDK's own variables (`OTEL_TRACES_SAMPLER`,
`OTEL_SERVICE_NAME`, ...). Spans go out in batches over the protocol
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or else `OTEL_EXPORTER_OTLP_PROTOCOL` names: `grpc` (the
default, as the Python SDK's) or `http/protobuf`. `collector()` tells Envoy the same.

The exporter's own failures (a collector that is down) are logged as one JSON line each, at most
one per message a minute. The SDK is imported only when tracing is on, so a server without it
pays nothing. Tracing that is on but cannot work raises `SettingsError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from sidecar_shared import jsonlog, otlp_proto
from sidecar_shared.errors import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

GRPC = "grpc"
HTTP = "http/protobuf"
PROTOCOLS = (GRPC, HTTP)
DEFAULT_PORTS = {GRPC: 4317, HTTP: 4318}
TRACES_PATH = "/v1/traces"  # appended to OTEL_EXPORTER_OTLP_ENDPOINT for HTTP, as the SDK does
EXPORTER_LOG_INTERVAL_S = 60.0


def enabled(environ: Mapping[str, str]) -> bool:
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) and environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def protocol(environ: Mapping[str, str]) -> str:
    """The traces protocol, the per-signal variable first. Raises SettingsError for a value
    the SDK does not export with (`http/json` included)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(name, "").strip()
        if value:
            if value not in PROTOCOLS:
                raise SettingsError(f"{name}={value!r}: must be one of {', '.join(PROTOCOLS)}")
            return value
    return GRPC


@dataclass(frozen=True)
class Collector:
    """Where the traces go, as the SDK reads the variables: host, port (the protocol's usual
    one when the URL has none), protocol and, for HTTP, the request path."""

    host: str
    port: int
    protocol: str
    path: str


def collector(environ: Mapping[str, str]) -> Collector:
    """Call only when `enabled`. Raises SettingsError for an endpoint without a host."""
    chosen = protocol(environ)
    signal = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    endpoint = signal or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if not parts.hostname:
        raise SettingsError(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r}: no host")
    # The per-signal URL is used as it is; the generic one gets the signal's path appended.
    path = (parts.path or "/") if signal else parts.path.rstrip("/") + TRACES_PATH
    return Collector(parts.hostname, parts.port or DEFAULT_PORTS[chosen], chosen, path)


def span_exporter(chosen: str) -> SpanExporter:
    """The SDK's OTLP exporter for protocol `chosen` (GRPC or HTTP), configured by the
    `OTEL_*` variables. Raises SettingsError when it does not load."""
    otlp_proto.install()  # before the exporter imports opentelemetry.proto
    try:
        if chosen == HTTP:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter as HttpExporter,
            )

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    except ImportError as exc:
        raise SettingsError(
            f"tracing is on but the OTLP {chosen} exporter does not load ({exc}); install"
            " envoy-sidecar's dependencies (pip install envoy-sidecar)"
        ) from exc


def tracer_provider(
    service_name: str, environ: Mapping[str, str], log_stream: TextIO | None = None
) -> TracerProvider | None:
    """A provider exporting over OTLP, or None when tracing is off. The caller shuts it down
    (which flushes what is buffered). The exporter's failures go to `log_stream` (stderr).
    Raises SettingsError when the settings are wrong or the exporter does not load."""
    if not enabled(environ):
        return None
    exporter = span_exporter(protocol(environ))
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    jsonlog.route_library_logs("opentelemetry", log_stream, EXPORTER_LOG_INTERVAL_S)
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
