"""An `Authorizer` wired for unit tests: in-memory audit, fresh metrics, injected clock."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer, LimitSettings
from ext_authz.metrics import AuthzMetrics
from ext_authz.ratelimit import Limiter, MemoryLimiter
from ext_authz.tokens import TokenVerifier


@dataclass
class Wired:
    authorizer: Authorizer
    audit: io.StringIO = field(default_factory=io.StringIO)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)


def make_authorizer(
    verifier: TokenVerifier,
    clock: Callable[[], float],
    *,
    limiter: Limiter | None = None,
    audit_sample: float = 1.0,
    limits: LimitSettings | None = None,
) -> Wired:
    audit = io.StringIO()
    registry = CollectorRegistry()
    authorizer = Authorizer(
        verifier,
        limiter if limiter is not None else MemoryLimiter(clock=clock),
        AuditLog(audit, audit_sample),
        AuthzMetrics(registry),
        logging.getLogger("test"),
        clock,
        limits or LimitSettings(),
    )
    return Wired(authorizer, audit, registry)
