"""Composition of ext_authz: the decision core from its parts, then the transports around it.

`build_authorizer` is the one place that chooses the key sources, the rate-limit backend, and
the observers; every resource it opens is registered on the caller's `ExitStack`, so a failure
at any later step (a port already taken, say) releases what was opened before it. Both
transports always run: gRPC (the contract, and gRPC health) and HTTP checks; Envoy is
configured to use one of them (`--authz-transport`, read by the xDS server and the bootstrap).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer
from ext_authz.decision import DecisionObserver
from ext_authz.keys import KeySource
from ext_authz.metrics import AuthzMetrics, KeyMetrics, TokenCacheStats
from ext_authz.observers import AuditObserver, MetricsObserver, ProxyHint, TracingObserver
from ext_authz.policy_file import PolicyFileError, PolicyTable
from ext_authz.policy_file import load as load_policy_file
from ext_authz.ratelimit import (
    AsyncLimiter,
    GuardedAsyncLimiter,
    GuardedLimiter,
    Limiter,
    MemoryLimiter,
    ThreadedAsyncLimiter,
)
from ext_authz.settings import AuthzSettings
from ext_authz.tokens import TokenVerifier
from ext_authz.transports import Transport
from ext_authz.transports.grpc import GrpcTransport
from ext_authz.transports.http import LOOP as HTTP_LOOP
from ext_authz.transports.http import HttpTransport
from sidecar_shared import ops_http, tls, tracing
from sidecar_shared.contract import read_policy_keys
from sidecar_shared.errors import SettingsError
from sidecar_shared.registry import server_registry


@dataclass(frozen=True)
class Backend:
    """The rate-limit store, for threads (`sync`) and for the HTTP transport's event loop
    (`async_`; None when `sync` never waits on I/O), and why it cannot be reached right now
    (`unreachable`; None: it can)."""

    sync: Limiter
    async_: AsyncLimiter | None = None
    unreachable: str | None = None


def make_backend(settings: AuthzSettings, stack: contextlib.ExitStack) -> Backend:
    """The one place that chooses the rate-limit backend (the Redis client is imported only
    when Redis is chosen). Raises BackendConfigError when it cannot be used as configured.

    On the event loop a single Redis server is reached through redis-py's asyncio client
    (checks of one loop turn pipelined); Cluster and Sentinel go through the same client the
    threads use, each call on a worker thread, so the loop never waits on a socket."""
    if settings.rate_limit_backend != "redis":
        return Backend(MemoryLimiter(fail_open=settings.rate_limit_fail_open))
    from ext_authz.ratelimit.redis_backend import (  # noqa: PLC0415
        AsyncRedisLimiter,
        RedisLimiter,
        check_backend,
    )
    from ext_authz.ratelimit.redis_url import parse_redis_url  # noqa: PLC0415

    unreachable = check_backend(
        settings.redis_url,
        settings.redis_key_prefix,
        connect_timeout_ms=settings.redis_connect_timeout_ms,
    )
    limiter = RedisLimiter.from_url(
        settings.redis_url,
        timeout_ms=settings.redis_timeout_ms,
        connect_timeout_ms=settings.redis_connect_timeout_ms,
        prefix=settings.redis_key_prefix,
    )
    stack.callback(limiter.close)
    on_loop: AsyncLimiter
    if parse_redis_url(settings.redis_url).kind == "single":
        on_loop = AsyncRedisLimiter.from_url(
            settings.redis_url,
            timeout_ms=settings.redis_timeout_ms,
            connect_timeout_ms=settings.redis_connect_timeout_ms,
            prefix=settings.redis_key_prefix,
        )
    else:
        on_loop = ThreadedAsyncLimiter(limiter)
    return Backend(limiter, on_loop, unreachable)


def _audit_stream(settings: AuthzSettings, stack: contextlib.ExitStack) -> TextIO:
    if settings.audit_file == "-":
        return sys.stdout
    return stack.enter_context(open(settings.audit_file, "a", encoding="utf-8"))


def build_authorizer(
    settings: AuthzSettings,
    log: logging.Logger,
    registry: CollectorRegistry,
    stack: contextlib.ExitStack,
    observers: Sequence[DecisionObserver] = (),
) -> tuple[Authorizer, GuardedLimiter]:
    """The decision core with its keys (refreshed in the background), limiter, metrics and
    audit, then `observers` (tracing); and its guarded limiter, whose `available` says whether
    the rate-limit backend answers. Raises KeyConfigError when the keys cannot be used,
    SettingsError when the route-policy keys cannot, BackendConfigError when the rate-limit
    backend cannot."""
    metrics = AuthzMetrics(registry)
    keys = KeySource(settings.keys, log, metrics=KeyMetrics(registry))
    keys.load()
    table = load_policy_table(settings.policy_file, log)
    policy_keys = load_policy_keys(settings.policy_key_file, required=table is None)
    keys.start()
    stack.callback(keys.stop)
    backend = make_backend(settings, stack)
    limiter = GuardedLimiter(
        backend.sync,
        fail_open=settings.rate_limit_fail_open,
        log=log,
        on_outage=metrics.rate_limit_outages.inc,
        on_error=metrics.rate_limit_backend_errors.inc,
    )
    if backend.unreachable is not None:
        limiter.report_unavailable(backend.unreachable)
    metrics.rate_limit_backend_available.set_function(lambda: 1.0 if limiter.available else 0.0)
    verifier = TokenVerifier(settings.verifier, keys, log=log)
    registry.register(TokenCacheStats(verifier.cache))
    audit = AuditLog(_audit_stream(settings, stack), settings.audit_allow_sample)
    audit.start()
    stack.callback(audit.close)
    authorizer = Authorizer(
        verifier,
        limiter,
        [
            MetricsObserver(metrics),
            AuditObserver(audit, settings.audit_denials_per_second),
            ProxyHint(settings.limits.trusted_hops, log),
            *observers,
        ],
        log,
        limits=settings.limits,
        guard=settings.guard,
        async_limiter=GuardedAsyncLimiter(backend.async_, limiter) if backend.async_ else None,
        policy_keys=policy_keys,
        policy_table=table,
    )
    return authorizer, limiter


def load_policy_table(path: Path | None, log: logging.Logger) -> PolicyTable | None:
    """The policy file's routes (None without one). Raises SettingsError when it cannot be
    used: ext_authz does not start on a file it would misread."""
    if path is None:
        return None
    try:
        table = load_policy_file(path)
    except PolicyFileError as err:
        raise SettingsError(f"--policy-file: {err}") from None
    services = sorted({r.service for r in table.routes})
    log.info(
        "policy file loaded",
        extra={"fields": {"file": str(path), "routes": len(table.routes), "services": services}},
    )
    return table


def load_policy_keys(path: Path | None, required: bool = True) -> tuple[bytes, ...]:
    """The route-policy MAC keys. Raises SettingsError without a usable key file when
    `required` (no policy file): ext_authz would refuse every route's policy, so it does not
    start. Not required, and not given: no key, so every policy a check carries is refused
    and only the policy file decides."""
    if path is None and not required:
        return ()
    if path is None:
        raise SettingsError(
            "--policy-key-file (SIDECAR_POLICY_KEY_FILE) is required: the xDS server signs each "
            "route's policy with a key from the same file, and no other policy is believed"
        )
    try:
        return read_policy_keys(path)
    except (OSError, ValueError) as err:
        raise SettingsError(f"--policy-key-file: {err}") from None


def _backend_note(settings: AuthzSettings, limiter: GuardedLimiter) -> str | None:
    """What /ready adds while the rate-limit backend is unavailable (checks go on meanwhile,
    under the failure policy)."""
    if limiter.available:
        return None
    policy = "open" if settings.rate_limit_fail_open else "closed"
    return f"rate-limit backend unavailable: failing {policy} until it answers"


def exposure_warnings(settings: AuthzSettings) -> list[str]:
    """A warning for each port that other hosts can reach without a client certificate."""
    check_risk = (
        "have checks answered, spend any client address's failed-auth budget and rate limits, "
        "and send the route policy a check is made under"
    )
    warnings = [
        tls.exposure_warning(
            "the ext_authz gRPC port",
            settings.host,
            settings.port,
            settings.tls,
            check_risk,
            "--authz-tls-client-ca",
        ),
        tls.exposure_warning(
            "the ext_authz HTTP check port",
            settings.host,
            settings.http_check_port,
            settings.tls,
            check_risk,
            "--authz-tls-client-ca",
        ),
        tls.exposure_warning(
            "the ext_authz ops port",
            settings.http_host,
            settings.http_port,
            None,
            "read its metrics",
        ),
    ]
    return [w for w in warnings if w is not None]


def run(settings: AuthzSettings, log: logging.Logger, stop: threading.Event) -> None:
    """Serve until `stop` is set. Raises SettingsError (tracing), KeyConfigError,
    BackendConfigError or OSError when it cannot start."""
    with contextlib.ExitStack() as stack:
        registry = server_registry()  # process_* metrics too, no _created series
        provider = tracing.tracer_provider("ext-authz", os.environ)
        observers: list[DecisionObserver] = []
        if provider is not None:
            stack.callback(provider.shutdown)
            observers.append(TracingObserver(provider.get_tracer("ext_authz")))
        authorizer, limiter = build_authorizer(settings, log, registry, stack, observers)
        traced = provider is not None
        transports: list[Transport] = [
            GrpcTransport(
                authorizer,
                settings.host,
                settings.port,
                settings.workers,
                traced,
                server_tls=settings.tls,
            ),
            HttpTransport(
                authorizer,
                settings.host,
                settings.http_check_port,
                on_stop=[authorizer.aclose],
                server_tls=settings.tls,
            ),
        ]
        serving = threading.Event()
        ops = ops_http.serve_in_thread(
            settings.http_host,
            settings.http_port,
            {
                "/metrics": ops_http.metrics_page(registry),
                "/ready": ops_http.ready_page(
                    lambda: None if serving.is_set() else "not serving checks yet",
                    lambda: _backend_note(settings, limiter),
                ),
            },
        )
        stack.callback(ops.close)
        for transport in transports:
            transport.start()
            stack.callback(transport.stop, 2.0)
        for warning in exposure_warnings(settings):
            log.warning(warning)
        for transport in transports:
            transport.set_serving(True)
        serving.set()
        log.info(
            "ext_authz started",
            extra={
                "fields": {
                    "grpc": f"{settings.host}:{settings.port}",
                    "http_check": f"{settings.host}:{settings.http_check_port} ({HTTP_LOOP})",
                    "ops": f"{settings.http_host}:{settings.http_port}",
                    "tls": tls.describe(settings.tls),
                    "hmac": settings.keys.secret is not None
                    or settings.keys.secret_file is not None,
                    "jwks": settings.keys.jwks,
                    "rate_limit_backend": settings.rate_limit_backend,
                }
            },
        )
        stop.wait()
        serving.clear()
        for transport in transports:
            transport.set_serving(False)
    log.info("ext_authz stopped")
