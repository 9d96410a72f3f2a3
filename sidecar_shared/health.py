"""gRPC health (`grpc.health.v1`) for our servers: one call sets the whole server ("") and the
named services together, so a probe of either gets the same answer."""

from __future__ import annotations

from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def set_sync(servicer: health.HealthServicer, services: Iterable[str], status: int) -> None:
    for name in ("", *services):
        servicer.set(name, status)


async def set_aio(
    servicer: health.aio.HealthServicer, services: Iterable[str], status: int
) -> None:
    for name in ("", *services):
        await servicer.set(name, status)
