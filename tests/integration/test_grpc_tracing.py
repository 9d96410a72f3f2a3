"""ext_authz's gRPC transport over real gRPC, tracing on: Envoy's `traceparent` (the call's
metadata, for its span of the ext_authz call) makes the check's span a child of Envoy's, and a
malformed one is ignored: the check is answered as usual, the trace falls back to the client's
`traceparent` like the audit line does, and nothing is made up."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer
from ext_authz.observers import AuditObserver, TracingObserver
from ext_authz.ratelimit import MemoryLimiter
from ext_authz.tokens import TokenVerifier, VerifierSettings
from ext_authz.transports.grpc import GrpcTransport
from tests.support import ports, tokens
from tests.support.authorizers import key_source
from tests.support.authz_client import check
from tests.support.policies import POLICY_KEY

ENVOY_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass
class Traced:
    port: int
    exporter: InMemorySpanExporter
    audit: AuditLog
    audit_out: io.StringIO

    def audit_trace_ids(self) -> list[str | None]:
        self.audit.flush()
        return [json.loads(line)["trace_id"] for line in self.audit_out.getvalue().splitlines()]


@pytest.fixture
def traced() -> Iterator[Traced]:
    """The gRPC transport as ext_authz runs it with tracing on, spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    audit_out = io.StringIO()
    audit = AuditLog(audit_out, 1.0)  # every decision audited
    authorizer = Authorizer(
        TokenVerifier(VerifierSettings(), key_source(tokens.TEST_SECRET), time.time),
        MemoryLimiter(),
        [TracingObserver(provider.get_tracer("test")), AuditObserver(audit)],
        logging.getLogger("test"),
        policy_keys=(POLICY_KEY,),
    )
    port = ports.free_port()
    transport = GrpcTransport(authorizer, "127.0.0.1", port, workers=2, traced=True)
    transport.start()
    try:
        yield Traced(port, exporter, audit, audit_out)
    finally:
        transport.stop(0)
        provider.shutdown()


def test_a_grpc_check_carrying_envoys_traceparent_is_a_child_span_in_envoys_trace(
    traced: Traced,
) -> None:
    response = check(
        traced.port,
        f"Bearer {tokens.token()}",
        metadata=[("traceparent", f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01")],
    )
    assert response.HasField("ok_response")
    (span,) = traced.exporter.get_finished_spans()
    assert span.name == "ext_authz check"
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == ENVOY_TRACE
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == ENVOY_SPAN
    assert span.attributes is not None
    assert (span.attributes["sidecar.decision"], span.attributes["sidecar.service"]) == (
        "allow",
        "svc",
    )
    assert traced.audit_trace_ids() == [ENVOY_TRACE]


def test_envoys_traceparent_wins_over_the_clients(traced: Traced) -> None:
    check(
        traced.port,
        f"Bearer {tokens.token()}",
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        metadata=[("traceparent", f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01")],
    )
    (span,) = traced.exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == ENVOY_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == ENVOY_SPAN


def test_an_unsampled_envoy_traceparent_makes_no_span(traced: Traced) -> None:
    response = check(
        traced.port,
        f"Bearer {tokens.token()}",
        metadata=[("traceparent", f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-00")],
    )
    assert response.HasField("ok_response")
    assert traced.exporter.get_finished_spans() == ()
    assert traced.audit_trace_ids() == [ENVOY_TRACE]  # still followed, just not sampled


MALFORMED = [
    "garbage",
    "",
    f"00-{ENVOY_TRACE.upper()}-{ENVOY_SPAN}-01",  # upper-case hex
    f"00-{'0' * 32}-{ENVOY_SPAN}-01",  # all-zero trace id
    f"00-{ENVOY_TRACE}-{'0' * 16}-01",  # all-zero span id
    f"ff-{ENVOY_TRACE}-{ENVOY_SPAN}-01",  # version ff
    f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01-extra",  # version 00 has exactly four fields
    f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01" + "x" * 600,  # too long
]
MALFORMED_IDS = ["garbage", "empty", "upper", "zero-trace", "zero-span", "ff", "extra", "long"]


@pytest.mark.parametrize("malformed", MALFORMED, ids=MALFORMED_IDS)
def test_a_malformed_envoy_traceparent_is_ignored_not_an_error(
    traced: Traced, malformed: str
) -> None:
    allowed = check(traced.port, f"Bearer {tokens.token()}", metadata=[("traceparent", malformed)])
    assert allowed.HasField("ok_response")
    denied = check(traced.port, "Bearer not-a-token", metadata=[("traceparent", malformed)])
    assert denied.denied_response.status.code == 401
    assert traced.exporter.get_finished_spans() == ()
    assert traced.audit_trace_ids() == [None, None]


@pytest.mark.parametrize("malformed", MALFORMED, ids=MALFORMED_IDS)
def test_past_a_malformed_envoy_traceparent_the_clients_sampled_one_is_the_parent(
    traced: Traced, malformed: str
) -> None:
    response = check(
        traced.port,
        f"Bearer {tokens.token()}",
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        metadata=[("traceparent", malformed)],
    )
    assert response.HasField("ok_response")
    (span,) = traced.exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == CLIENT_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == CLIENT_SPAN
    # The span and the audit line name the same trace.
    assert traced.audit_trace_ids() == [CLIENT_TRACE]
