"""The side effects of a decision, one observer each: Prometheus metrics, the audit line, and
tracing spans. The core calls every observer once per check.

The audit log cannot be turned into a disk filler: every field a client chooses is cut to
`AUDIT_MAX_FIELD_CHARS`, a trace id is kept only when it is a valid W3C or B3 id, and denials
of one client address are written at most `per_address` a second; the rest are counted (in
full by the metrics) and summarized by one `"decision":"suppressed"` line, with their number,
before that address's next written denial.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ext_authz.audit import AuditLog, AuditRecord, SuppressedRecord
from ext_authz.decision import CheckInput, Decision
from ext_authz.metrics import AuthzMetrics
from sidecar_shared import defaults
from sidecar_shared.bounded import BoundedMap

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


class MetricsObserver:
    """Counts every decision, its latency and rate-limit result. A label set's children are
    looked up once, then kept (`labels()` costs more than the increment)."""

    def __init__(self, metrics: AuthzMetrics) -> None:
        self._metrics = metrics
        # Counter children by label set, looked up once each: `labels()` costs more than the
        # rest of this observer. Reasons are a fixed set of codes and services the catalog's,
        # so these stay small.
        self._checks: dict[tuple[int, str, str | None], Any] = {}
        self._limits: dict[tuple[str | None, bool], Any] = {}
        self._seconds = metrics.check_seconds

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        key = (outcome.status, outcome.reason, decision.service)
        child = self._checks.get(key)
        if child is None:
            decided = "allow" if outcome.allowed else "deny"
            child = self._checks[key] = self._metrics.checks.labels(
                decided, str(outcome.status), outcome.reason, decision.service or ""
            )
        child.inc()
        self._seconds.observe(decision.latency_us / 1_000_000)
        if decision.limited:
            limit_key = (decision.service, outcome.allowed)
            limit = self._limits.get(limit_key)
            if limit is None:
                result = "allowed" if outcome.allowed else "limited"
                limit = self._limits[limit_key] = self._metrics.rate_limit_decisions.labels(
                    decision.service or "", result
                )
            limit.inc()


# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; version ff is invalid;
# version 00 has exactly these four fields, later versions may append more.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# B3: a 64- or 128-bit lowercase hex trace id.
_B3_TRACE_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_ZERO = frozenset("0")


@dataclass(frozen=True)
class TraceParent:
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    sampled: bool


_SAMPLED_DIGITS = frozenset("13579bdf")  # a flags byte's last hex digit with the sampled bit


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A W3C `traceparent` as the specification defines it (lengths, lowercase hex, non-zero
    ids, version ff invalid, version 00 exactly four fields), or None."""
    if value is None or len(value) > 512:
        return None
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace, span, flags, rest = m.groups()
    if (
        version == "ff"
        or (version == "00" and rest is not None)
        or set(trace) == _ZERO
        or set(span) == _ZERO
    ):
        return None
    return TraceParent(trace, span, bool(int(flags, 16) & 1))


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The request's trace id when the client sent a valid one (W3C first, then B3), else
    None: an id that breaks the specification is dropped, never copied."""
    parent = parse_traceparent(headers.get("traceparent"))
    if parent is not None:
        return parent.trace_id
    b3 = headers.get("x-b3-traceid")
    if b3 is not None and _B3_TRACE_ID.fullmatch(b3) and set(b3) != _ZERO:
        return b3
    return None


def _trace_id_of(req: CheckInput) -> str | None:
    """Envoy's trace (when the transport read it), else the client's."""
    parent = parse_traceparent(req.trace_parent)
    return parent.trace_id if parent is not None else trace_id(req.headers)


def _cut(value: str | None, limit: int = defaults.AUDIT_MAX_FIELD_CHARS) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit] + "…"


class DenialRate:
    """At most `per_second` denials per address per second are written; the rest are counted
    until the address's next written denial. At most `max_keys` addresses are tracked."""

    def __init__(self, per_second: int, max_keys: int = 100_000) -> None:
        self._per_second = per_second
        # address -> (second, written in it, suppressed since the last written line)
        self._state: BoundedMap[str, tuple[int, int, int]] = BoundedMap(max_keys)
        self._lock = threading.Lock()

    def admit(self, address: str, now: float) -> tuple[bool, int]:
        """(write this denial?, denials suppressed before it to report now)."""
        if self._per_second <= 0:
            return True, 0
        second = int(now)
        with self._lock:
            seen, written, suppressed = self._state.get(address, (second, 0, 0))
            if seen != second:
                written = 0
            if written >= self._per_second:
                self._state[address] = (second, written, suppressed + 1)
                admitted, report = False, 0
            else:
                self._state[address] = (second, written + 1, 0)
                admitted, report = True, suppressed
        return admitted, report


class AuditObserver:
    """Every denial (at a bounded rate per address), and the sampled share of allows, as one
    JSON line."""

    def __init__(
        self, audit: AuditLog, denials_per_address: int = defaults.AUDIT_DENIALS_PER_ADDRESS
    ) -> None:
        self._audit = audit
        self._rate = DenialRate(denials_per_address)

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        if not self._audit.wants(outcome.allowed):
            return
        if not outcome.allowed:
            admitted, suppressed = self._rate.admit(decision.client, decision.at)
            if suppressed:
                self._audit.write_suppressed(
                    SuppressedRecord(decision.at, _cut(decision.client) or "", suppressed)
                )
            if not admitted:
                return
        req, identity = decision.request, decision.identity
        self._audit.write(
            AuditRecord(
                time=decision.at,
                request_id=_cut(outcome.request_id) or "",
                trace_id=_trace_id_of(req),
                user=identity.user if identity else None,
                tenant=identity.tenant if identity else None,
                service=decision.service,
                method=_cut(req.method, 16) or "",
                path=_cut(req.path.split("?", 1)[0]) or "",
                decision="allow" if outcome.allowed else "deny",
                status=outcome.status,
                reason=outcome.reason,
                latency_us=decision.latency_us,
            )
        )


class TracingObserver:
    """One span per sampled check, a child of Envoy's span for the call (or of the client's
    span when the transport could not tell Envoy's). Unsampled checks cost a header lookup."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import trace  # noqa: PLC0415

        self._tracer = tracer
        self._trace = trace

    def observe(self, decision: Decision) -> None:
        req = decision.request
        header = req.headers.get("traceparent")
        if req.trace_parent is None:
            # The common case, settled without parsing: every version keeps the flags at
            # 53-54, and an even last digit is an unsampled trace.
            if header is None or len(header) < 55 or header[54] not in _SAMPLED_DIGITS:
                return
            parent = parse_traceparent(header)
        else:
            # A malformed context from the transport is ignored, as if absent (as the audit
            # line's trace id is): the span and the audit line name the same trace.
            parent = parse_traceparent(req.trace_parent) or parse_traceparent(header)
        if parent is None or not parent.sampled:
            return
        trace = self._trace
        context = trace.set_span_in_context(
            trace.NonRecordingSpan(
                trace.SpanContext(
                    int(parent.trace_id, 16),
                    int(parent.span_id, 16),
                    is_remote=True,
                    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
                )
            )
        )
        outcome = decision.outcome
        start_ns = int(decision.at * 1e9)
        span = self._tracer.start_span(
            "ext_authz check",
            context=context,
            kind=trace.SpanKind.SERVER,
            start_time=start_ns,
            attributes={
                "sidecar.service": decision.service or "",
                "sidecar.decision": "allow" if outcome.allowed else "deny",
                "sidecar.reason": outcome.reason,
                "http.response.status_code": outcome.status,
                "http.request.method": _cut(req.method, 16) or "",
                "sidecar.request_id": _cut(outcome.request_id) or "",
            },
        )
        if outcome.status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.reason))
        span.end(end_time=start_ns + decision.latency_us * 1000)
