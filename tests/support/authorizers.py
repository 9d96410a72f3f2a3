"""The decision core wired for unit tests: keys loaded once (no background thread), in-memory
audit, fresh metrics, an injected clock."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer, GuardSettings, LimitSettings
from ext_authz.keys import KeySettings, KeySource
from ext_authz.metrics import AuthzMetrics
from ext_authz.observers import AuditObserver, MetricsObserver
from ext_authz.ratelimit import Limiter, MemoryLimiter
from ext_authz.tokens import TokenVerifier, VerifierSettings
from tests.support.policies import POLICY_KEY


def key_source(
    secret: bytes | None = None,
    jwks: Path | None = None,
    secret_file: Path | None = None,
    clock: Callable[[], float] | None = None,
    refresh_min_s: float = 5.0,
) -> KeySource:
    settings = KeySettings(
        secret=secret,
        secret_file=secret_file,
        jwks=str(jwks) if jwks else None,
        refresh_min_s=refresh_min_s,
    )
    keys = KeySource(settings, logging.getLogger("test"), clock or (lambda: 0.0))
    keys.load()
    return keys


def make_verifier(
    keys: KeySource, clock: Callable[[], float], settings: VerifierSettings | None = None
) -> TokenVerifier:
    return TokenVerifier(settings or VerifierSettings(), keys, clock)


@dataclass
class Wired:
    authorizer: Authorizer
    audit: io.StringIO = field(default_factory=io.StringIO)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    audit_log: AuditLog | None = None

    def audit_text(self) -> str:
        """Every audit line so far (the log buffers them)."""
        if self.audit_log is not None:
            self.audit_log.flush()
        return self.audit.getvalue()


def make_authorizer(
    verifier: TokenVerifier,
    clock: Callable[[], float],
    *,
    limiter: Limiter | None = None,
    audit_sample: float = 1.0,
    limits: LimitSettings | None = None,
    guard: GuardSettings | None = None,
) -> Wired:
    audit = io.StringIO()
    audit_log = AuditLog(audit, audit_sample)
    registry = CollectorRegistry()
    authorizer = Authorizer(
        verifier,
        limiter if limiter is not None else MemoryLimiter(clock=clock),
        [MetricsObserver(AuthzMetrics(registry)), AuditObserver(audit_log)],
        logging.getLogger("test"),
        clock,
        limits or LimitSettings(),
        guard or GuardSettings(),
        policy_keys=(POLICY_KEY,),
    )
    return Wired(authorizer, audit, registry, audit_log)
