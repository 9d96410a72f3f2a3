"""The decision core's data, free of any transport: what a check asks (`CheckInput`), what it
answers (`Outcome`), and what observers see afterwards (`Decision`).

A transport turns its own request into a `CheckInput` and an `Outcome` into its own response;
an observer (metrics, audit, tracing) receives one `Decision` per check.

Treat all three as immutable. They are not frozen dataclasses only because one of those costs
four times as much to build, and each is built on every check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ext_authz.tokens import Identity

Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class CheckInput:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names, as Envoy sends them
    context: Mapping[str, str]  # the route's context_extensions
    client_ip: str = ""
    # W3C traceparent of Envoy's span for this check call (gRPC metadata or HTTP header of the
    # check request itself), when the transport reads it; else the client's, from `headers`.
    trace_parent: str | None = None
    # The caller's own address (ext_authz's socket peer) when it is not a trusted Envoy (on
    # loopback, or with a verified client certificate): checks then count against it, whatever
    # `client_ip` and `x-forwarded-for` say. None: the caller is trusted.
    untrusted_peer: str | None = None


@dataclass(slots=True)
class Outcome:
    status: int  # 200 when allowed
    reason: str
    message: str
    request_id: str
    set_headers: Headers = ()  # on the upstream request, overwriting
    remove_headers: tuple[str, ...] = ()  # from the upstream request
    response_headers: Headers = ()  # to the client, allowed or denied
    body: bytes = b""  # denials only
    # Dry run (`RoutePolicy.dry_run`): the status enforcing would have answered (the reason is
    # the denial's); the request is allowed. 0: not a dry-run denial.
    would_deny: int = 0

    @property
    def allowed(self) -> bool:
        return self.status == 200


@dataclass(slots=True)
class Decision:
    """One finished check, for observers."""

    request: CheckInput
    outcome: Outcome
    identity: Identity | None
    service: str | None
    at: float  # wall-clock seconds when the check started
    latency_us: int
    client: str = ""  # the client address the decision counted against
    limited: bool = False  # the request was counted against the route's rate limit


class DecisionObserver(Protocol):
    def observe(self, decision: Decision) -> None:
        """Called once per check, after the outcome is known. Must not raise."""


@runtime_checkable
class QuickObserver(DecisionObserver, Protocol):
    """An observer that can see a cached allow without a `Decision` (the decision core's fast
    path, `ext_authz.fastpath`). The fast path runs only when every observer is one."""

    gates: bool  # `passes` may say no (when False, it is never asked)
    counts: bool  # `observe_allow` does something (when False, it is never called)

    def passes(self, traceparent: str | None, trace_parent: str | None) -> bool:
        """Whether an allow of a request with this `traceparent` header (and, from the
        transport, `CheckInput.trace_parent`) needs no more than `observe_allow` (no sampled
        trace, say). Must not raise."""

    def observe_allow(self, service: str | None, limited: bool, latency_us: int) -> bool:
        """Record an allow (status 200, reason `ok`) as `observe` would; True when this one
        must also be `record`ed in full (an audit line). Must not raise."""

    def record(self, decision: Decision) -> None:
        """What `observe` does for an allow beyond `observe_allow`'s part."""
