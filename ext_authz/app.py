"""Composition of ext_authz: keys, decision core, gRPC server, health, metrics, key refresh."""

from __future__ import annotations

import logging
import sys
import threading
from concurrent import futures
from typing import TextIO

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from ext_authz.audit import AuditLog
from ext_authz.core import Authorizer
from ext_authz.grpc_service import AuthorizationService
from ext_authz.metrics import AuthzMetrics
from ext_authz.ratelimit import GuardedLimiter, Limiter, MemoryLimiter, RedisLimiter
from ext_authz.settings import AuthzSettings, read_secret
from ext_authz.tokens import KeyConfigError, TokenVerifier

SERVICE_NAME = "envoy.service.auth.v3.Authorization"


def _refresh_keys(
    settings: AuthzSettings, verifier: TokenVerifier, log: logging.Logger, stop: threading.Event
) -> None:
    """Pick up a rotated secret file or JWKS without a restart."""
    path = settings.secret_file
    seen = path.stat().st_mtime_ns if path is not None else None
    while not stop.wait(settings.key_refresh_s):
        if path is not None:
            try:
                mtime = path.stat().st_mtime_ns
                if mtime != seen:
                    verifier.set_secret(read_secret(path))
                    seen = mtime
                    log.info("JWT secret reloaded", extra={"fields": {"file": str(path)}})
            except (OSError, KeyConfigError) as err:
                log.error("cannot reload the JWT secret", extra={"fields": {"error": str(err)}})
        if verifier.refresh_jwks():
            log.info("JWKS reloaded", extra={"fields": {"source": settings.verifier.jwks}})


def make_backend(settings: AuthzSettings) -> Limiter:
    """The one place that chooses the rate-limit backend."""
    if settings.rate_limit_backend == "redis":
        return RedisLimiter.from_url(
            settings.redis_url,
            timeout_ms=settings.redis_timeout_ms,
            prefix=settings.redis_key_prefix,
        )
    return MemoryLimiter()


def run(settings: AuthzSettings, log: logging.Logger, stop: threading.Event) -> None:
    """Serve until `stop` is set. Raises KeyConfigError or OSError when it cannot start."""
    registry = CollectorRegistry()
    metrics = AuthzMetrics(registry)
    verifier = TokenVerifier(settings.verifier)
    audit_stream: TextIO = (
        sys.stdout
        if settings.audit_file == "-"
        else open(settings.audit_file, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    )
    limiter = GuardedLimiter(
        make_backend(settings),
        fail_open=settings.rate_limit_fail_open,
        log=log,
        on_outage=metrics.rate_limit_outages.inc,
        on_error=metrics.rate_limit_backend_errors.inc,
    )
    authorizer = Authorizer(
        verifier,
        limiter,
        AuditLog(audit_stream, settings.audit_allow_sample),
        metrics,
        log,
        limits=settings.limits,
    )

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="check"),
        options=[("grpc.so_reuseport", 0)],
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationService(authorizer), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    http_server, _ = start_http_server(settings.http_port, settings.http_host, registry)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    refresher = threading.Thread(
        target=_refresh_keys, args=(settings, verifier, log, stop), name="key-refresh", daemon=True
    )
    refresher.start()
    log.info(
        "ext_authz started",
        extra={
            "fields": {
                "grpc": address,
                "metrics": f"{settings.http_host}:{settings.http_port}",
                "hmac": settings.verifier.secret is not None,
                "jwks": settings.verifier.jwks,
                "rate_limit_backend": settings.rate_limit_backend,
            }
        },
    )
    try:
        stop.wait()
    finally:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        server.stop(grace=2).wait()
        http_server.shutdown()
        if audit_stream is not sys.stdout:
            audit_stream.close()
        log.info("ext_authz stopped")
