"""The side effects of a decision, one observer each: Prometheus metrics and the audit line.
Tracing will be one more. The core calls every observer once per check.

The audit log cannot be turned into a disk filler: every field a client chooses is cut to
`AUDIT_MAX_FIELD_CHARS`, a trace id is kept only when it is a valid W3C or B3 id, and denials
of one client address are written at most `per_address` a second; the rest are counted (in
full by the metrics) and summarized by one `"decision":"suppressed"` line, with their number,
before that address's next written denial.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ext_authz.audit import AuditLog, AuditRecord, SuppressedRecord
from ext_authz.decision import Decision
from ext_authz.metrics import AuthzMetrics
from sidecar_shared import defaults


class MetricsObserver:
    def __init__(self, metrics: AuthzMetrics) -> None:
        self._metrics = metrics
        # Counter children by (status, reason), looked up once each: `labels()` costs more
        # than the rest of this observer. Reasons are a fixed set of codes, so it stays small.
        self._checks: dict[tuple[int, str], Any] = {}

    def observe(self, decision: Decision) -> None:
        outcome = decision.outcome
        key = (outcome.status, outcome.reason)
        child = self._checks.get(key)
        if child is None:
            child = self._checks[key] = self._metrics.checks.labels(str(key[0]), key[1])
        child.inc()


# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; version ff is invalid;
# version 00 has exactly these four fields, later versions may append more.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# B3: a 64- or 128-bit lowercase hex trace id.
_B3_TRACE_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_ZERO = frozenset("0")


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The request's trace id when the client sent a valid one (W3C first, then B3), else
    None: an id that breaks the specification is dropped, never copied."""
    parent = headers.get("traceparent")
    if parent is not None and len(parent) <= 512:
        m = _TRACEPARENT.fullmatch(parent)
        if m is not None:
            version, trace, span, _, rest = m.groups()
            if (
                version != "ff"
                and not (version == "00" and rest is not None)
                and set(trace) != _ZERO
                and set(span) != _ZERO
            ):
                return trace
    b3 = headers.get("x-b3-traceid")
    if b3 is not None and _B3_TRACE_ID.fullmatch(b3) and set(b3) != _ZERO:
        return b3
    return None


def _cut(value: str | None, limit: int = defaults.AUDIT_MAX_FIELD_CHARS) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit] + "…"


class DenialRate:
    """At most `per_second` denials per address per second are written; the rest are counted
    until the address's next written denial. At most `max_keys` addresses are tracked."""

    def __init__(self, per_second: int, max_keys: int = 100_000) -> None:
        self._per_second = per_second
        self._max_keys = max_keys
        # address -> (second, written in it, suppressed since the last written line)
        self._state: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, address: str, now: float) -> tuple[bool, int]:
        """(write this denial?, denials suppressed before it to report now)."""
        if self._per_second <= 0:
            return True, 0
        second = int(now)
        with self._lock:
            seen, written, suppressed = self._state.pop(address, (second, 0, 0))
            if seen != second:
                written = 0
            if written >= self._per_second:
                self._state[address] = (second, written, suppressed + 1)
                admitted, report = False, 0
            else:
                self._state[address] = (second, written + 1, 0)
                admitted, report = True, suppressed
            if len(self._state) > self._max_keys:
                self._state.popitem(last=False)
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
                trace_id=trace_id(req.headers),
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
