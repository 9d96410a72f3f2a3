"""The Prometheus registry of one server: its own metrics (each server's metrics class registers
into it), plus the process (`process_*`: CPU, memory, open files, start time) and Python runtime
(`python_info`, `python_gc_*`) collectors, and no `_created` series.

One registry per server object, never prometheus_client's global one, so that each test gets a
fresh registry. The `_created` switch is the one process-wide setting prometheus_client has
(`disable_created_metrics`, read at every collection): the servers of this package never want
those series (one more series per counter and histogram, which Prometheus does not need), so
making a server's registry turns them off.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)


def server_registry() -> CollectorRegistry:
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
