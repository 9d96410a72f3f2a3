"""Composition of the xDS server: cache, fleet, reloader, ADS, health and the HTTP status page.

Start-up has two steps. `build` makes every object and wires them, with no I/O: nothing is
bound, read or started. `serve` then binds the ports, loads the catalog, starts the servers and
waits for `stop`; everything it starts is closed by the `AsyncExitStack` that `run` owns, in
the reverse order, whatever fails and wherever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from sidecar_shared import grpc_ports, ops_http, tls, tracing
from sidecar_shared import health as grpc_health
from sidecar_shared.contract import XDS_HEALTH_SERVICE
from sidecar_shared.registry import server_registry
from xds_server import environments, health_events
from xds_server.admin import AdminService
from xds_server.cache import SnapshotCache
from xds_server.csds import CsdsService
from xds_server.fleet import Fleet, Rejection
from xds_server.metrics import ProxyStates, XdsMetrics
from xds_server.observers import LogObserver, MetricsObserver, Observers, TracingObserver
from xds_server.proxies import ProxyRegistry
from xds_server.reload import Build, Reloader, decode_and_build, native_files
from xds_server.server import AdsService, StreamLimits
from xds_server.settings import XdsSettings
from xds_server.snapshot import Snapshot
from xds_server.state_dir import StateDir
from xds_server.status import CatalogStatus, StatusDocument
from xds_server.wip_notice import WipNotice


@dataclass(frozen=True)
class XdsServer:
    """Everything the xDS server is made of, built and wired, nothing started."""

    settings: XdsSettings
    log: logging.Logger
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    reloader: Reloader
    pages: Mapping[str, ops_http.Handler]
    # Counts each health transition in Envoy's event log (None: no --health-event-log).
    count_transition: Callable[[health_events.Transition], None] | None = None


async def run(
    settings: XdsSettings, log: logging.Logger, stop: asyncio.Event, build: Build | None = None
) -> None:
    """Serve until `stop` is set, then shut down with a short grace period. `build` replaces
    the catalog → snapshot step (tests use it to make configs Envoy rejects). Raises
    SettingsError (tracing on but unusable) or OSError (a port cannot be bound)."""
    async with contextlib.AsyncExitStack() as stack:
        await serve(build_server(settings, log, stack, build), stop, stack)
    log.info("xds server stopped")


def build_server(
    settings: XdsSettings,
    log: logging.Logger,
    stack: contextlib.AsyncExitStack,
    build: Build | None = None,
) -> XdsServer:
    """Every object of the server, wired; no I/O. What must be closed goes on `stack`."""
    registry = server_registry()  # process_* metrics too, no _created series
    metrics = XdsMetrics(registry)
    provider = tracing.tracer_provider("xds-server", os.environ)
    if provider is not None:
        stack.callback(provider.shutdown)  # flushes the spans still buffered
    tracer = provider.get_tracer("xds_server") if provider is not None else None
    cache = SnapshotCache()
    proxies = ProxyRegistry()
    registry.register(ProxyStates(lambda: proxies.states(cache.current())))
    health_servicer = health.aio.HealthServicer()
    pending: set[asyncio.Task[None]] = set()

    wip_notice = WipNotice(log)

    def on_loaded(snapshot: Snapshot) -> None:
        wip_notice.loaded(snapshot)
        task = asyncio.create_task(
            grpc_health.set_aio(health_servicer, [XDS_HEALTH_SERVICE], grpc_health.SERVING)
        )
        pending.add(task)
        task.add_done_callback(pending.discard)

    def on_rejected(rejection: Rejection) -> None:
        reloader.rejected_by_envoy(rejection.describe())

    fleet = Fleet(
        cache,
        metrics,
        log,
        settings.rollback_on_nack,
        on_rejected,
        unauthenticated_veto=settings.unauthenticated_veto,
        store=StateDir(settings.state_dir, log) if settings.state_dir is not None else None,
    )
    builder = decode_and_build(settings.translate)
    reloader = Reloader(
        settings.catalog,
        build or builder,
        cache,
        fleet,
        metrics,
        log,
        on_loaded,
        tracer,
        kept=fleet.bounds.versions,
        env=settings.env,
        fallback=fleet.fallback,
        also=native_files(settings.translate),
    )
    observers = [MetricsObserver(metrics), LogObserver(log), fleet]
    if tracer is not None:
        observers.append(TracingObserver(tracer))

    server = grpc.aio.server(
        options=[
            *grpc_ports.EXCLUSIVE,
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ]
    )
    ads = AdsService(
        cache,
        proxies,
        Observers(*observers),
        StreamLimits(settings.max_streams, settings.max_streams_per_connection),
        settings.spare_names,
        fleet,
    )
    server.add_generic_rpc_handlers((ads.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def status_document() -> StatusDocument:
        current = cache.current()
        # the newest version every connected proxy has ACKed (a rollback target)
        common = fleet.last_acked_by_all() if len(proxies) else None
        loaded = reloader.state
        return StatusDocument(
            version=current.version if current else None,
            fleet_acked_version=common.version if common else None,
            versions=dict(current.versions) if current else {},
            catalog=CatalogStatus(
                # "service_catalog.json + service_catalog.staging.json" with an environment
                environments.CatalogFiles(settings.catalog, settings.env).name,
                loaded.ok,
                loaded.problems,
                loaded.at,
                reloader.watch_error,
            ),
            proxies=proxies.report(current),
            refused=proxies.refusals(),
            rollback_on_nack=fleet.rollback,
            rejected=fleet.report(),
            time=time.time(),
        )

    def status_page() -> ops_http.Page:
        body = json.dumps(status_document().to_json(), indent=2).encode() + b"\n"
        return 200, "application/json", body

    # The operator API and CSDS, on the same port and trust as ADS (docs/admin-api.md).
    admin = AdminService(
        cache,
        builder.catalog_of,
        status_document,
        settings.translate,
        settings.tls,
    )
    csds = CsdsService(cache, lambda: list(proxies), settings.tls)
    server.add_generic_rpc_handlers((admin.handler(), csds.handler()))

    pages = {
        "/status": status_page,
        "/metrics": ops_http.metrics_page(registry),
        "/ready": ops_http.ready_page(
            lambda: "no valid catalog loaded" if cache.current() is None else None
        ),
    }

    counted: set[tuple[str, str]] = set()

    def count_transition(t: health_events.Transition) -> None:
        # Label sets are bounded whatever the log holds.
        if (t.service, t.endpoint) not in counted:
            if len(counted) >= health_events.MAX_COUNTED_ENDPOINTS:
                return
            counted.add((t.service, t.endpoint))
        metrics.health_transitions.labels(t.service, t.endpoint, t.to_state).inc()

    return XdsServer(settings, log, server, health_servicer, reloader, pages, count_transition)


def exposure_warnings(settings: XdsSettings) -> list[str]:
    """A warning for each port that other hosts can reach without a client certificate."""
    warnings = [
        tls.exposure_warning(
            "the xDS port",
            settings.host,
            settings.port,
            settings.tls,
            "read every cluster, upstream address and route policy, and ACK or NACK versions",
            "--xds-tls-client-ca",
        ),
        tls.exposure_warning(
            "the xDS status port",
            settings.http_host,
            settings.http_port,
            None,
            "read the fleet's status (node ids, versions, catalog problems) and metrics",
        ),
    ]
    return [w for w in warnings if w is not None]


async def serve(xds: XdsServer, stop: asyncio.Event, stack: contextlib.AsyncExitStack) -> None:
    """Bind, load the catalog, start, and wait for `stop`; each thing started is stopped by
    `stack`, in reverse: health NOT_SERVING first, then the watcher, gRPC with a 2 s grace,
    the HTTP server. Raises OSError when a port cannot be bound."""
    settings, log = xds.settings, xds.log
    await grpc_health.set_aio(xds.health, [XDS_HEALTH_SERVICE], grpc_health.NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    credentials = tls.grpc_credentials(settings.tls) if settings.tls else None
    grpc_ports.listen(xds.grpc_server, address, credentials)
    for warning in exposure_warnings(settings):
        log.warning(warning)
    http = await ops_http.serve(settings.http_host, settings.http_port, xds.pages)
    stack.callback(http.close)
    await xds.reloader.load()
    await xds.grpc_server.start()
    stack.push_async_callback(xds.grpc_server.stop, 2)
    watcher = asyncio.create_task(xds.reloader.watch(stop, settings.debounce_ms))

    async def end_watch() -> None:
        stop.set()  # (already set, unless serving ended another way)
        await watcher

    stack.push_async_callback(end_watch)
    event_log = settings.translate.observability.health_event_log
    if event_log and xds.count_transition is not None:
        # The transitions Envoy logs, counted (xds_health_transitions_total): the xDS server
        # configured the log and serves the metrics, so it reads it.
        follower = asyncio.create_task(
            health_events.follow(health_events.Tailer(Path(event_log)), xds.count_transition, stop)
        )

        async def end_follow() -> None:
            stop.set()
            await follower

        stack.push_async_callback(end_follow)
    stack.push_async_callback(
        grpc_health.set_aio, xds.health, [XDS_HEALTH_SERVICE], grpc_health.NOT_SERVING
    )
    log.info(
        "xds server started",
        extra={
            "fields": {
                "grpc": address,
                "tls": tls.describe(settings.tls),
                "http": f"{settings.http_host}:{settings.http_port}",
                "catalog": str(settings.catalog),
                "state_dir": str(settings.state_dir) if settings.state_dir else None,
            }
        },
    )
    if not settings.translate.authz.policy_key:
        log.warning("no --policy-key-file: route policies are unsigned and ext_authz refuses them")
    await stop.wait()
