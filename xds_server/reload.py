"""Watch the catalog file → validate → build → check → swap.

A catalog that fails any step leaves the served snapshot as it was; the problems are logged
with their JSON paths and counted. So does one that builds into a version Envoy rejected
before (the fleet says which and why, `Rejections`; counted as `result="rejected"`);
`rejected_by_envoy` reports that the version this reloader loaded was rejected after it was
served (`fleet.Fleet` calls it). Builds are incremental (`builder.SnapshotBuilder`).

Editors save in place, write a temp file and rename it, or delete and recreate: the whole
directory is watched (not recursively), so each of these, and a Kubernetes ConfigMap's symlink
swap, is seen. A change elsewhere in the directory re-reads nothing unless the catalog's file
(after symlinks) changed; content that did not change is not rebuilt.

The reloader cannot die: an exception anywhere in a reload, a bug included, is a failed reload
(logged with its traceback, counted as `result="error"`, `xds_catalog_valid` 0, the last good
snapshot kept), and a failure of the watcher itself restarts the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from watchfiles import Change, awatch

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

from sidecar_shared.bounded import BoundedMap
from xds_server.builder import SnapshotBuilder
from xds_server.cache import SnapshotCache
from xds_server.catalog import CatalogError
from xds_server.fleet import Bounds
from xds_server.metrics import XdsMetrics
from xds_server.resources.common import Options
from xds_server.snapshot import Snapshot


@dataclass(frozen=True)
class ReloadState:
    """The outcome of the last attempt, for status pages."""

    version: str | None
    ok: bool
    problems: tuple[str, ...]
    at: float


Build = Callable[[bytes, str], tuple[Snapshot, int]]
"""File contents and their source name → (snapshot, services); raises CatalogError."""


def decode_and_build(options: Options) -> Build:
    """The build step: each call rebuilds only what changed since the last one."""
    return SnapshotBuilder(options)


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the catalog's file does (symlinks followed); None if unreadable."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class Rejections(Protocol):
    """The versions Envoy rejected (`fleet.Fleet`)."""

    def rejection(self, version: str) -> str | None:
        """Why Envoy rejected `version`, or None if it did not."""


class Reloader:
    def __init__(
        self,
        path: Path,
        build: Build,
        cache: SnapshotCache,
        rejections: Rejections,
        metrics: XdsMetrics,
        log: logging.Logger,
        on_loaded: Callable[[Snapshot], None] = lambda _: None,
        tracer: Tracer | None = None,
        kept: int = Bounds().versions,
    ) -> None:
        """`tracer`: one span per attempt ("catalog reload"); a push it causes is its child.
        `kept`: versions whose service count is remembered; more than the fleet's history
        (`fleet.Bounds.versions`), so that any version a rollback returns to is known."""
        self._tracer = tracer
        self._path = path
        self._build = build
        self._cache = cache
        self._rejections = rejections
        self._metrics = metrics
        self._log = log
        self._on_loaded = on_loaded
        self._last_digest: bytes | None = None
        self._last_identity: tuple[int, int, int, int] | None = None
        self.state = ReloadState(None, False, ("not loaded yet",), time.time())
        # Services per version built, for the gauges of whatever is served: a reload's
        # snapshot, or an older one a rollback after a NACK (`Fleet`) brings back.
        self._services_of: BoundedMap[str, int] = BoundedMap(kept)
        cache.subscribe(self._served)

    def _served(self, snapshot: Snapshot) -> None:
        self._metrics.snapshot.info({"version": snapshot.version})
        services = self._services_of.get(snapshot.version)
        if services is not None:
            self._metrics.catalog_services.set(services)

    async def load(self) -> bool:
        """One attempt; True when a new snapshot is being served. Never raises."""
        if self._tracer is None:
            return await self._guarded_load()
        with self._tracer.start_as_current_span("catalog reload") as span:
            changed = await self._guarded_load()
            span.set_attribute("sidecar.catalog.valid", self.state.ok)
            span.set_attribute("sidecar.catalog.changed", changed)
            if self.state.version is not None:
                span.set_attribute("sidecar.snapshot.version", self.state.version)
            if not self.state.ok:
                span.set_attribute("sidecar.catalog.errors", list(self.state.problems[:20]))
            return changed

    async def _guarded_load(self) -> bool:
        try:
            return await self._load()
        except Exception as err:
            self._log.exception("catalog reload failed with an internal error")
            return self._fail(
                [f"internal error while loading the catalog: {type(err).__name__}: {err}"],
                result="error",
            )

    async def _load(self) -> bool:
        self._last_identity = _file_identity(self._path)
        try:
            data = self._path.read_bytes()
        except OSError as err:
            return self._fail([f"cannot read {self._path}: {err.strerror or err}"])
        digest = hashlib.sha256(data).digest()
        if digest == self._last_digest:
            self._metrics.reloads.labels("unchanged").inc()
            return False
        started = time.perf_counter()
        try:
            snapshot, services = await asyncio.to_thread(self._build, data, str(self._path))
        except CatalogError as err:
            return self._fail([str(p) for p in err.problems])
        self._metrics.snapshot_build_seconds.observe(time.perf_counter() - started)
        rejected = self._rejections.rejection(snapshot.version)
        if rejected is not None:
            return self._fail([rejected], result="rejected")
        self._last_digest = digest
        self._services_of[snapshot.version] = services  # now the newest
        changed = self._cache.set(snapshot)
        self._metrics.reloads.labels("ok" if changed else "unchanged").inc()
        self._metrics.catalog_valid.set(1)
        self.state = ReloadState(snapshot.version, True, (), time.time())
        if changed:
            self._log.info(
                "catalog loaded",
                extra={
                    "fields": {
                        "path": str(self._path),
                        "version": snapshot.version,
                        "services": services,
                        "build_ms": round((time.perf_counter() - started) * 1000, 2),
                    }
                },
            )
            self._on_loaded(snapshot)
        return changed

    def rejected_by_envoy(self, why: str) -> None:
        """The version this reloader loaded was rejected by Envoy (`why`, Envoy's words)."""
        self._fail([why], result="rejected")

    def _fail(self, problems: list[str], result: str = "invalid") -> bool:
        self._last_digest = None
        self._metrics.reloads.labels(result).inc()
        self._metrics.catalog_valid.set(0)
        current = self._cache.current()
        self.state = ReloadState(
            current.version if current else None, False, tuple(problems), time.time()
        )
        self._log.error(
            "catalog rejected; still serving the last good version"
            if current
            else "catalog rejected; nothing is served until it is fixed",
            extra={
                "fields": {
                    "path": str(self._path),
                    "serving_version": current.version if current else None,
                    "errors": problems,
                }
            },
        )
        return False

    def _catalog_changed(self, changes: set[tuple[Change, str]]) -> bool:
        """Whether a batch of directory changes touched the catalog (its name, or the file
        its name resolves to, as after a ConfigMap's symlink swap)."""
        path = str(self._path.absolute())
        if any(changed == path for _, changed in changes):
            return True
        return _file_identity(self._path) != self._last_identity

    async def watch(self, stop: asyncio.Event, debounce_ms: int) -> None:
        """Reload on every change of the catalog until `stop` is set."""
        directory = self._path.absolute().parent
        while not stop.is_set():
            try:
                async for changes in awatch(
                    directory,
                    stop_event=stop,
                    debounce=debounce_ms,
                    step=max(1, min(debounce_ms, 10)),
                    recursive=False,
                ):
                    if self._catalog_changed(changes):
                        await self.load()
                return
            except Exception:
                self._log.exception("the catalog watcher failed; restarting it in 1 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                await self.load()
