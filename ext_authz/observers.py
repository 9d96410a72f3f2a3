"""The side effects of a decision, one observer each: Prometheus metrics, the audit line, and
tracing spans. The core calls every observer once per check.

The audit log cannot be turned into a disk filler: every field a client chooses is cut to
`AUDIT_MAX_FIELD_CHARS`, a trace id is kept only when it is a valid W3C or B3 id, and at most
`denials_per_second` denial lines are written a second, all clients together (one cap for the
process, so the disk rate has a bound whatever the number of addresses, and users behind one
address do not share a small cap of their own). Past the cap a denial is counted by service and
reason (and in full by the metrics) and is in a `"decision":"suppressed"` summary line within a
second (`AuditLog.suppress`), whatever comes next.

`ProxyHint` says once, in the log, when most checks come from one client address while no
proxy hop is trusted: then every user shares that address's failure budget and rate limits.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ext_authz.audit import AuditLog, AuditRecord
from ext_authz.decision import CheckInput, Decision
from ext_authz.metrics import AuthzMetrics
from sidecar_shared import defaults

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


class MetricsObserver:
    """Counts every decision, its latency and rate-limit result (`CheckCounters`: plain ints,
    exported at scrape time). Label tuples are made once per (status, reason, service)."""

    gates = False
    counts = True

    def __init__(self, metrics: AuthzMetrics) -> None:
        self._count = metrics.decisions.count
        # Reasons are a fixed set of codes and services the catalog's, so these stay small.
        self._checks: dict[tuple[int, str, str | None, int | None], tuple[str, str, str, str]] = {}
        self._limits: dict[tuple[str | None, bool], tuple[str, str]] = {}

    def _labels(
        self, status: int, reason: str, service: str | None, would_deny: int | None = None
    ) -> tuple[str, str, str, str]:
        """(decision, status, reason, service); a dry run's allow is `would_deny` with the
        status enforcing would have answered."""
        key = (status, reason, service, would_deny)
        labels = self._checks.get(key)
        if labels is None:
            if would_deny:
                decided, shown = "would_deny", str(would_deny)
            else:
                decided, shown = ("allow" if status == 200 else "deny"), str(status)
            labels = self._checks[key] = (decided, shown, reason, service or "")
        return labels

    def _limit_labels(self, service: str | None, allowed: bool) -> tuple[str, str]:
        key = (service, allowed)
        labels = self._limits.get(key)
        if labels is None:
            result = "allowed" if allowed else "limited"
            labels = self._limits[key] = (service or "", result)
        return labels

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        self._count(
            self._labels(outcome.status, outcome.reason, decision.service, outcome.would_deny),
            decision.latency_us / 1_000_000,
            self._limit_labels(decision.service, outcome.allowed) if decision.limited else None,
        )

    def passes(self, traceparent: str | None, trace_parent: str | None) -> bool:
        return True

    def observe_allow(self, service: str | None, limited: bool, latency_us: int) -> bool:
        self._count(
            self._labels(200, "ok", service),
            latency_us / 1_000_000,
            self._limit_labels(service, True) if limited else None,
        )
        return False

    def record(self, decision: Decision) -> None:
        """Nothing beyond `observe_allow`."""


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
    """At most `per_second` denials are admitted (written) per second of the clock, all clients
    together; 0 or less: every one."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._second = 0
        self._written = 0
        self._lock = threading.Lock()

    def admit(self, now: float) -> bool:
        """Whether to write this denial."""
        if self._per_second <= 0:
            return True
        second = int(now)
        with self._lock:
            if second != self._second:
                self._second, self._written = second, 0
            if self._written >= self._per_second:
                return False
            self._written += 1
            return True


class AuditObserver:
    """Every denial (written up to a cap a second, then counted in a summary), and the sampled
    share of allows, as one JSON line."""

    gates = False
    counts = True

    def __init__(
        self, audit: AuditLog, denials_per_second: int = defaults.AUDIT_DENIALS_PER_SECOND
    ) -> None:
        self._audit = audit
        self._rate = DenialRate(denials_per_second)

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        if not self._audit.wants(outcome.allowed and not outcome.would_deny):
            return
        denied = not outcome.allowed or outcome.would_deny
        if denied and not self._rate.admit(decision.at):
            self._audit.suppress(_cut(decision.service), outcome.reason)
            return
        self.record(decision)

    def passes(self, traceparent: str | None, trace_parent: str | None) -> bool:
        return True

    def observe_allow(self, service: str | None, limited: bool, latency_us: int) -> bool:
        return self._audit.wants(True)

    def record(self, decision: Decision) -> None:
        """The decision's line (the sampling and the denial cap already said yes)."""
        outcome = decision.outcome
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
                decision="would_deny"
                if outcome.would_deny
                else ("allow" if outcome.allowed else "deny"),
                status=outcome.would_deny or outcome.status,
                reason=outcome.reason,
                latency_us=decision.latency_us,
            )
        )


class ProxyHint:
    """Logs once when, of the first `checks` checks, more than `share` came from one client
    address while `trusted_hops` is 0: a proxy or load balancer in front of Envoy, whose
    address every user then shares (its failure budget, its rate limits on public routes)."""

    gates = True
    counts = False

    def __init__(
        self,
        trusted_hops: int,
        log: logging.Logger,
        checks: int = defaults.PROXY_HINT_CHECKS,
        share: float = 0.9,
    ) -> None:
        self._active = trusted_hops <= 0 and checks > 0
        self._log = log
        self._checks = checks
        self._share = share
        self._seen: dict[str, int] = {}  # at most `checks` addresses
        self._count = 0
        self._lock = threading.Lock()

    def passes(self, traceparent: str | None, trace_parent: str | None) -> bool:
        """Once it has looked at its checks, it needs none."""
        return not self._active

    def observe_allow(self, service: str | None, limited: bool, latency_us: int) -> bool:
        return False

    def record(self, decision: Decision) -> None:
        self.observe(decision)

    def observe(self, decision: Decision) -> None:
        if not self._active:
            return
        with self._lock:
            if not self._active:
                return
            self._count += 1
            self._seen[decision.client] = self._seen.get(decision.client, 0) + 1
            if self._count < self._checks:
                return
            self._active = False
            address, most = max(self._seen.items(), key=lambda item: item[1])
            self._seen = {}
        if most > self._share * self._checks:
            self._log.warning(
                "most checks come from one client address: a proxy or load balancer in front "
                "of Envoy? Set --trusted-proxy-hops (SIDECAR_TRUSTED_PROXY_HOPS) to the number "
                "of proxies that append to x-forwarded-for, or every user behind it shares one "
                "failed-auth budget and one rate limit per public route",
                extra={
                    "fields": {
                        "address": _cut(address),
                        "checks": self._checks,
                        "from_address": most,
                    }
                },
            )


class TracingObserver:
    """One span per sampled check, a child of Envoy's span for the call (or of the client's
    span when the transport could not tell Envoy's). Unsampled checks cost a header lookup."""

    gates = True
    counts = False

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import trace  # noqa: PLC0415

        self._tracer = tracer
        self._trace = trace

    def passes(self, traceparent: str | None, trace_parent: str | None) -> bool:
        """No span: nothing sampled (as `observe` decides; the client's header told without
        parsing, the transport's context parsed)."""
        if trace_parent is not None:  # the transport's (gRPC metadata): it decides when valid
            parent = parse_traceparent(trace_parent)
            if parent is not None:
                return not parent.sampled
        header = traceparent
        return header is None or len(header) < 55 or header[54] not in _SAMPLED_DIGITS

    def observe_allow(self, service: str | None, limited: bool, latency_us: int) -> bool:
        return False

    def record(self, decision: Decision) -> None:
        self.observe(decision)

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
