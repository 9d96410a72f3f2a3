"""ext_authz makes a span only for sampled checks, as a child of the caller's span."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ext_authz.decision import CheckInput, Decision, Outcome
from ext_authz.observers import TracingObserver, parse_traceparent
from sidecar_shared import jsonlog, tracing
from sidecar_shared.errors import SettingsError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"


def decide(trace_parent: str | None, headers: dict[str, str] | None = None) -> Decision:
    req = CheckInput("GET", "/orders/1", headers or {}, {}, trace_parent=trace_parent)
    outcome = Outcome(200, "ok", "allowed", "rid-1")
    return Decision(req, outcome, None, "orders", 1_800_000_000.0, 42)


@pytest.fixture
def exported() -> tuple[TracingObserver, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingObserver(provider.get_tracer("test")), exporter


def test_a_sampled_check_is_a_child_of_envoys_span(
    exported: tuple[TracingObserver, InMemorySpanExporter],
) -> None:
    observer, exporter = exported
    observer.observe(decide(f"00-{TRACE}-{ENVOY_SPAN}-01"))
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == ENVOY_SPAN
    assert span.attributes is not None and span.attributes["sidecar.decision"] == "allow"
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time - span.start_time == 42_000  # the check's own latency


@pytest.mark.parametrize(
    "parent",
    [
        None,
        f"00-{TRACE}-{ENVOY_SPAN}-00",  # not sampled
        f"00-{'0' * 32}-{ENVOY_SPAN}-01",  # the all-zero trace id is invalid
        f"ff-{TRACE}-{ENVOY_SPAN}-01",  # version ff is invalid
        f"00-{TRACE.upper()}-{ENVOY_SPAN}-01",  # upper-case hex is invalid
    ],
)
def test_no_span_for_unsampled_or_invalid_trace_context(
    exported: tuple[TracingObserver, InMemorySpanExporter], parent: str | None
) -> None:
    observer, exporter = exported
    observer.observe(decide(parent))
    assert exporter.get_finished_spans() == ()


def test_without_envoys_context_the_clients_sampled_traceparent_is_the_parent(
    exported: tuple[TracingObserver, InMemorySpanExporter],
) -> None:
    observer, exporter = exported
    observer.observe(decide(None, {"traceparent": f"00-{TRACE}-{ENVOY_SPAN}-01"}))
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE


@given(
    version=st.sampled_from(["00", "01", "cc", "ff", "0g"]),
    flags=st.text("0123456789abcdefABCDEF", min_size=2, max_size=2),
    tail=st.sampled_from(["", "-what-follows", "x"]),
    trace=st.sampled_from([TRACE, "0" * 32, TRACE[:-1]]),
)
def test_a_header_makes_a_span_exactly_when_the_full_parser_says_sampled(
    version: str, flags: str, tail: str, trace: str
) -> None:
    # The observer settles most headers without parsing; it must agree with the parser.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    header = f"{version}-{trace}-{ENVOY_SPAN}-{flags}{tail}"
    TracingObserver(provider.get_tracer("test")).observe(decide(None, {"traceparent": header}))
    parsed = parse_traceparent(header)
    assert len(exporter.get_finished_spans()) == (1 if parsed and parsed.sampled else 0), header


def test_the_traceparent_parser_follows_the_w3c_rules() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{ENVOY_SPAN}-03")
    assert parsed is not None and parsed.sampled
    assert parse_traceparent(f"00-{TRACE}-{ENVOY_SPAN}-01-extra") is None
    assert parse_traceparent(f"01-{TRACE}-{ENVOY_SPAN}-01-extra") is not None  # future version


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_an_endpoint_is_set(environ: dict[str, str], on: bool) -> None:
    assert tracing.enabled(environ) is on


@pytest.mark.parametrize(("protocol", "module"), [(tracing.GRPC, "grpc"), (tracing.HTTP, "http")])
def test_the_protocol_chooses_the_exporter(protocol: str, module: str) -> None:
    exporter = tracing.span_exporter(protocol)
    assert type(exporter).__module__.startswith(f"opentelemetry.exporter.otlp.proto.{module}.")
    exporter.shutdown()


def test_the_otlp_exporter_loads_in_this_install() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    provider = tracing.tracer_provider("t", environ, io.StringIO())
    assert provider is not None
    provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
            tracing.Collector("c", 4317, "grpc", "/v1/traces"),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            tracing.Collector("c", 4318, "http/protobuf", "/v1/traces"),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otlp/",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            tracing.Collector("c", 4318, "http/protobuf", "/otlp/v1/traces"),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9000/custom",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            tracing.Collector("c", 9000, "http/protobuf", "/custom"),
        ),
    ],
)
def test_the_collector_follows_the_sdks_variables(
    environ: dict[str, str], expected: tracing.Collector
) -> None:
    """The per-signal protocol wins; the generic endpoint gets /v1/traces, the per-signal one
    is used as it is; the port defaults to the protocol's (4317 gRPC, 4318 HTTP)."""
    assert tracing.collector(environ) == expected


def test_a_protocol_the_sdk_cannot_export_with_stops_startup() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        tracing.tracer_provider("t", environ)


def test_an_exporter_that_does_not_load_stops_startup_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(SettingsError, match="OTLP grpc exporter does not load"):
        tracing.tracer_provider("t", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})


def test_exporter_failures_are_one_json_line_each_at_most_once_a_minute() -> None:
    """A collector that is down: the exporter's errors, with exceptions, are single JSON lines,
    and a repeat of the same message within the interval is counted, not written."""
    out = io.StringIO()
    log = jsonlog.route_library_logs("opentelemetry.test_exporter", out, interval_s=60)
    for _ in range(3):
        try:
            raise ConnectionError("refused\nsecond line")
        except ConnectionError:
            log.exception("Failed to export %s to %s", "traces", "http://c:4317")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "Failed to export traces to http://c:4317"
    assert record["exception"] == "ConnectionError: refused"


def test_the_rate_limit_counts_what_it_dropped() -> None:
    now = [0.0]
    limit = jsonlog.RateLimit(60, clock=lambda: now[0])
    record = logging.LogRecord("x", logging.ERROR, "", 0, "failed %s", ("a",), None)
    assert limit.filter(record)
    assert not limit.filter(record) and not limit.filter(record)
    now[0] = 61.0
    later = logging.LogRecord("x", logging.ERROR, "", 0, "failed %s", ("b",), None)
    assert limit.filter(later)
    assert later.fields == {"suppressed": 2}  # type: ignore[attr-defined]
