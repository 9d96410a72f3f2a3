"""Composition of the xDS server: cache, reloader, ADS, health and the HTTP status page."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import CollectorRegistry

from sidecar_shared import grpc_ports, ops_http, tracing
from sidecar_shared import health as grpc_health
from sidecar_shared.contract import XDS_HEALTH_SERVICE
from xds_server.cache import SnapshotCache
from xds_server.fleet import Fleet, Rejection
from xds_server.metrics import ProxyStates, XdsMetrics
from xds_server.reload import Build, Reloader, decode_and_build
from xds_server.server import AdsService
from xds_server.settings import XdsSettings
from xds_server.snapshot import Snapshot
from xds_server.proxies import ProxyRegistry


async def run(
    settings: XdsSettings, log: logging.Logger, stop: asyncio.Event, build: Build | None = None
) -> None:
    """Serve until `stop` is set, then shut down with a short grace period. `build` replaces
    the catalog → snapshot step (tests use it to make configs Envoy rejects)."""
    registry = CollectorRegistry()
    metrics = XdsMetrics(registry)
    provider = tracing.tracer_provider("xds-server", os.environ)
    tracer = provider.get_tracer("xds_server") if provider is not None else None
    cache = SnapshotCache()
    proxies = ProxyRegistry()
    registry.register(ProxyStates(lambda: proxies.states(cache.current())))
    health_servicer = health.aio.HealthServicer()
    await grpc_health.set_aio(health_servicer, [XDS_HEALTH_SERVICE], grpc_health.NOT_SERVING)

    pending: set[asyncio.Task[None]] = set()

    def on_loaded(_: Snapshot) -> None:
        task = asyncio.create_task(
            grpc_health.set_aio(health_servicer, [XDS_HEALTH_SERVICE], grpc_health.SERVING)
        )
        pending.add(task)
        task.add_done_callback(pending.discard)

    reloader = Reloader(
        settings.catalog,
        build or decode_and_build(settings.translate),
        cache,
        metrics,
        log,
        on_loaded,
        tracer,
    )

    def on_rejected(rejection: Rejection) -> None:
        reloader.rejected_by_envoy(rejection.describe())

    fleet = Fleet(cache, proxies, metrics, log, settings.rollback_on_nack, on_rejected)

    server = grpc.aio.server(
        options=[
            *grpc_ports.EXCLUSIVE,
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    server.add_generic_rpc_handlers(
        (AdsService(cache, proxies, metrics, log, fleet.on_nack, tracer).handler(),)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.port}"
    grpc_ports.listen(server, address)

    def status_page() -> ops_http.Page:
        current = cache.current()
        common = cache.last_acked_by_all(proxies.acked()) if len(proxies) else None
        body = {
            "version": current.version if current else None,
            # the newest version every connected proxy has ACKed (a rollback target)
            "fleet_acked_version": common.version if common else None,
            "versions": dict(current.versions) if current else {},
            "catalog": {
                "path": str(settings.catalog),
                "valid": reloader.state.ok,
                "errors": list(reloader.state.problems),
                "checked_at": reloader.state.at,
            },
            "proxies": proxies.report(current),
            "refused": proxies.refusals(),
            "rollback_on_nack": fleet.rollback,
            "rejected": fleet.report(),
            "time": time.time(),
        }
        return 200, "application/json", json.dumps(body, indent=2).encode() + b"\n"

    http = await ops_http.serve(
        settings.http_host,
        settings.http_port,
        {
            "/status": status_page,
            "/metrics": ops_http.metrics_page(registry),
            "/ready": ops_http.ready_page(
                lambda: "no valid catalog loaded" if cache.current() is None else None
            ),
        },
    )
    await reloader.load()
    await server.start()
    watcher = asyncio.create_task(reloader.watch(stop, settings.debounce_ms))
    log.info(
        "xds server started",
        extra={
            "fields": {
                "grpc": address,
                "http": f"{settings.http_host}:{settings.http_port}",
                "catalog": str(settings.catalog),
            }
        },
    )
    try:
        await stop.wait()
    finally:
        await grpc_health.set_aio(health_servicer, [XDS_HEALTH_SERVICE], grpc_health.NOT_SERVING)
        http.close()
        await server.stop(grace=2)
        if provider is not None:
            provider.shutdown()
        await watcher
        log.info("xds server stopped")
