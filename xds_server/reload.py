"""Watch the catalog file → validate → build → check → swap.

A catalog that fails any step leaves the served snapshot as it was; the problems are logged
with their JSON paths and counted. Editors save in place, write a temp file and rename it, or
delete and recreate: the whole directory is watched (not recursively), so each of these, and a
Kubernetes ConfigMap's symlink swap, is seen; content that did not change is not rebuilt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

from xds_server.cache import SnapshotCache
from xds_server.catalog import Catalog, CatalogError, Problem, decode_catalog
from xds_server.metrics import XdsMetrics
from xds_server.snapshot import Snapshot
from xds_server.translate import Options, build_snapshot


@dataclass(frozen=True)
class ReloadState:
    """The outcome of the last attempt, for status pages."""

    version: str | None
    ok: bool
    problems: tuple[str, ...]
    at: float


def build_checked(catalog: Catalog, source: str, options: Options) -> Snapshot:
    """Translate a validated catalog into a snapshot that is safe to serve; raise CatalogError
    if it is not consistent. The reloader and `sidecar validate` both go through here."""
    snapshot = build_snapshot(catalog, options)
    inconsistent = snapshot.consistent()
    if inconsistent:
        raise CatalogError([Problem("", p) for p in inconsistent], source)
    return snapshot


def _decode_and_build(raw: bytes, source: str, options: Options) -> tuple[Snapshot, int]:
    catalog = decode_catalog(raw, source)
    return build_checked(catalog, source, options), len(catalog.services)


class Reloader:
    def __init__(
        self,
        path: Path,
        options: Options,
        cache: SnapshotCache,
        metrics: XdsMetrics,
        log: logging.Logger,
        on_loaded: Callable[[Snapshot], None] = lambda _: None,
    ) -> None:
        self._path = path
        self._options = options
        self._cache = cache
        self._metrics = metrics
        self._log = log
        self._on_loaded = on_loaded
        self._last_digest: bytes | None = None
        self.state = ReloadState(None, False, ("not loaded yet",), time.time())

    async def load(self) -> bool:
        """One attempt; True when a new snapshot is being served."""
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
            snapshot, services = await asyncio.to_thread(
                _decode_and_build, data, str(self._path), self._options
            )
        except CatalogError as err:
            return self._fail([str(p) for p in err.problems])
        self._metrics.snapshot_build_seconds.observe(time.perf_counter() - started)
        self._last_digest = digest
        changed = self._cache.set(snapshot)
        self._metrics.reloads.labels("ok" if changed else "unchanged").inc()
        self._metrics.catalog_services.set(services)
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

    def _fail(self, problems: list[str]) -> bool:
        self._last_digest = None
        self._metrics.reloads.labels("invalid").inc()
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

    async def watch(self, stop: asyncio.Event, debounce_ms: int) -> None:
        """Reload on every change in the catalog's directory until `stop` is set."""
        directory = self._path.absolute().parent
        async for _changes in awatch(
            directory,
            stop_event=stop,
            debounce=debounce_ms,
            step=max(1, min(debounce_ms, 10)),
            recursive=False,
        ):
            await self.load()
