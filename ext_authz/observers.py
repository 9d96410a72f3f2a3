"""The side effects of a decision, one observer each: Prometheus metrics and the audit line.
Tracing will be one more. The core calls every observer once per check."""

from __future__ import annotations

from collections.abc import Mapping

from ext_authz.audit import AuditLog, AuditRecord
from ext_authz.decision import Decision
from ext_authz.metrics import AuthzMetrics


class MetricsObserver:
    def __init__(self, metrics: AuthzMetrics) -> None:
        self._metrics = metrics

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        self._metrics.checks.labels(str(outcome.status), outcome.reason).inc()


def trace_id(headers: Mapping[str, str]) -> str | None:
    parent = headers.get("traceparent")
    if parent:
        parts = parent.split("-")
        if len(parts) >= 2 and len(parts[1]) == 32:
            return parts[1]
    return headers.get("x-b3-traceid")


class AuditObserver:
    """Every denial, and the sampled share of allows, as one JSON line."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        if not self._audit.wants(outcome.allowed):
            return
        req, identity = decision.request, decision.identity
        self._audit.write(
            AuditRecord(
                time=decision.at,
                request_id=outcome.request_id,
                trace_id=trace_id(req.headers),
                user=identity.user if identity else None,
                tenant=identity.tenant if identity else None,
                service=decision.service,
                method=req.method,
                path=req.path,
                decision="allow" if outcome.allowed else "deny",
                status=outcome.status,
                reason=outcome.reason,
                latency_us=decision.latency_us,
            )
        )
