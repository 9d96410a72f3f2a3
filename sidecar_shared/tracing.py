"""OpenTelemetry for our servers, configured the standard way (`OTEL_*` variables) and off
unless an OTLP endpoint is set: `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (`OTEL_SDK_DISABLED=true` turns it off again). The sampler,
headers, protocol details and service name follow the SDK's own variables
(`OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME`, ...). Spans go out over OTLP gRPC in batches.

The SDK is imported only when tracing is on, so a server without it pays nothing. Tracing that
is on but cannot work raises `SettingsError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sidecar_shared.errors import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


def _installed(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "<version>"


def enabled(environ: Mapping[str, str]) -> bool:
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) and environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def tracer_provider(service_name: str, environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting over OTLP gRPC, or None when tracing is off. The caller shuts it
    down (which flushes what is buffered). Raises SettingsError when the exporter does not
    load."""
    if not enabled(environ):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise SettingsError(
            f"tracing is on but the OTLP exporter does not load ({exc}). xds-protos ships older"
            " copies of opentelemetry-proto's modules and pip may have let them win; repair with:"
            " pip install --force-reinstall --no-deps opentelemetry-proto=="
            + _installed("opentelemetry-proto")
        ) from exc
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
