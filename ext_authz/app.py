"""Composition of ext_authz: the decision core from its parts, then the transports around it.

`build_authorizer` is the one place that chooses the key sources, the rate-limit backend, and
the observers; every resource it opens is registered on the caller's `ExitStack`, so a failure
at any later step (a port already taken, say) releases what was opened before it. `run` serves
both transports, whichever of them Envoy is configured to call: gRPC (the contract, and the
health probes) and HTTP (the fast one).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer
from ext_authz.keys import KeySource
from ext_authz.metrics import AuthzMetrics
from ext_authz.observers import AuditObserver, MetricsObserver
from ext_authz.ratelimit import (
    AsyncLimiter,
    GuardedAsyncLimiter,
    GuardedLimiter,
    Limiter,
    MemoryLimiter,
)
from ext_authz.settings import AuthzSettings
from ext_authz.tokens import TokenVerifier
from ext_authz.transports import Transport
from ext_authz.transports.grpc import GrpcTransport
from ext_authz.transports.http import LOOP as HTTP_LOOP
from ext_authz.transports.http import HttpTransport
from sidecar_shared import ops_http


@dataclass(frozen=True)
class Backend:
    """The rate-limit store, for threads (`sync`) and, when it waits on I/O, for the HTTP
    transport's event loop (`async_`)."""

    sync: Limiter
    async_: AsyncLimiter | None = None


def make_backend(settings: AuthzSettings, stack: contextlib.ExitStack) -> Backend:
    """The one place that chooses the rate-limit backend (the Redis client is imported only
    when Redis is chosen)."""
    if settings.rate_limit_backend == "redis":
        from ext_authz.ratelimit.redis_backend import (  # noqa: PLC0415
            AsyncRedisLimiter,
            RedisLimiter,
        )

        options: dict[str, Any] = {
            "timeout_ms": settings.redis_timeout_ms,
            "prefix": settings.redis_key_prefix,
        }
        limiter = RedisLimiter.from_url(settings.redis_url, **options)
        stack.callback(limiter.close)
        on_loop = AsyncRedisLimiter.from_url(settings.redis_url, **options)
        return Backend(limiter, on_loop)
    return Backend(MemoryLimiter())


def _audit_stream(settings: AuthzSettings, stack: contextlib.ExitStack) -> TextIO:
    if settings.audit_file == "-":
        return sys.stdout
    return stack.enter_context(open(settings.audit_file, "a", encoding="utf-8"))


def build_authorizer(
    settings: AuthzSettings,
    log: logging.Logger,
    registry: CollectorRegistry,
    stack: contextlib.ExitStack,
) -> Authorizer:
    """The decision core with its keys (refreshed in the background), limiter, audit and
    metrics. Raises KeyConfigError when the keys cannot be used."""
    metrics = AuthzMetrics(registry)
    keys = KeySource(settings.keys, log)
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
    audit = AuditLog(_audit_stream(settings, stack), settings.audit_allow_sample)
    audit.start()
    stack.callback(audit.close)
    return Authorizer(
        TokenVerifier(settings.verifier, keys),
        limiter,
        [MetricsObserver(metrics), AuditObserver(audit, settings.audit_denials_per_address)],
        log,
        limits=settings.limits,
        guard=settings.guard,
        async_limiter=GuardedAsyncLimiter(backend.async_, limiter) if backend.async_ else None,
    )


def run(settings: AuthzSettings, log: logging.Logger, stop: threading.Event) -> None:
    """Serve until `stop` is set. Raises KeyConfigError or OSError when it cannot start."""
    with contextlib.ExitStack() as stack:
        registry = CollectorRegistry()
        authorizer = build_authorizer(settings, log, registry, stack)
        transports: list[Transport] = [
            GrpcTransport(authorizer, settings.host, settings.port, settings.workers),
            HttpTransport(
                authorizer, settings.host, settings.http_check_port, on_stop=[authorizer.aclose]
            ),
        ]
        serving = threading.Event()
        ops = ops_http.serve_in_thread(
            settings.http_host,
            settings.http_port,
            {
                "/metrics": ops_http.metrics_page(registry),
                "/ready": ops_http.ready_page(
                    lambda: None if serving.is_set() else "not serving checks yet"
                ),
            },
        )
        stack.callback(ops.close)
        for transport in transports:
            transport.start()
            stack.callback(transport.stop, 2.0)
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
