"""Watch the catalog file → validate → build → check → swap.

A catalog that fails any step leaves the served snapshot as it was; the problems are logged
with their JSON paths and counted. So does one that builds into a version Envoy rejected
before (the fleet says which and why, `Rejections`; counted as `result="rejected"`);
`rejected_by_envoy` reports that the version this reloader loaded was rejected after it was
served (`fleet.Fleet` calls it). Builds are incremental (`builder.SnapshotBuilder`).

The watch follows the path, not the inode: the directories watched (`watched_directories`) are
the one holding each symlink met on the way from the catalog's path to its file, and the
file's own. So in-place saves, write-and-rename, delete-and-recreate, a Kubernetes ConfigMap's
symlink swap, a release-directory symlink swap (`current -> rel/2`) and a catalog that is a
symlink into another directory are all seen. Every `recheck_s` (and after every change) the
directories are chosen again, and watched anew when one was replaced (`rm -rf dir; mkdir dir`)
or a symlink now points elsewhere; the file's identity is compared too, so nothing a watch can
miss stays unseen longer than that. A change elsewhere re-reads nothing unless the catalog's
file (after symlinks) changed; content that did not change is not rebuilt.

The reloader cannot die: an exception anywhere in a reload, a bug included, is a failed reload
(logged with its traceback, counted as `result="error"`, `xds_catalog_valid` 0, the last good
snapshot kept), and a watch that cannot start or fails is reported (logged once per cause,
`watch_error` in `/status`, `xds_catalog_watched` 0) and retried every `recheck_s`, the file
being checked meanwhile.

With an environment (`env`), the base catalog and its overlay are read, merged and
substituted as one (`environments.read`); both files are followed as above, a change to either
reloads the merged catalog, and a problem is told against the file and path it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from watchfiles import Change, awatch

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

from sidecar_shared import defaults
from sidecar_shared.bounded import BoundedMap
from xds_server import environments
from xds_server.builder import SnapshotBuilder
from xds_server.cache import SnapshotCache
from xds_server.catalog import CatalogError
from xds_server.fleet import Bounds
from xds_server.metrics import XdsMetrics
from xds_server.resources.common import Options
from xds_server.sds_files import SdsWriter
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


def decode_and_build(options: Options) -> SnapshotBuilder:
    """The build step: each call rebuilds only what changed since the last one, and writes
    the SDS files its resources refer to before they are served."""
    return SnapshotBuilder(options, SdsWriter(options.sds_dir))


def native_files(options: Options) -> tuple[Path, ...]:
    """The files a build reads besides the catalog: the native engine's JWKS
    (`SnapshotBuilder` inlines it into every build)."""
    keys = options.authz.engines.compiled_keys
    return () if keys is None else (Path(keys.jwks),)


def _identities(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int, int] | None, ...]:
    return tuple(_file_identity(p) for p in paths)


def _contents(path: Path) -> bytes:
    """A file's bytes for the digest; an unreadable one counts as empty (the build says why)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the catalog's file does (symlinks followed); None if unreadable."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def watched_directories(path: Path, max_links: int = 40) -> tuple[Path, ...]:
    """The directories whose entries decide what `path` reads: the one holding each symlink
    met on the way from `path` to its file (followed one component at a time, as the kernel
    does), then the file's own directory. One that does not exist is replaced by its nearest
    existing ancestor (its creation is seen there). No duplicates; at most `max_links` links
    are followed (a loop stops there)."""
    found: list[Path] = []
    parts = list(path.absolute().parts)
    here = Path(parts.pop(0))
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            here = here.parent
            continue
        step = here / part
        try:
            target = Path(os.readlink(step))
        except OSError:  # not a symlink, or not there
            here = step
            continue
        links += 1
        found.append(here)
        if links > max_links:  # a loop: no file at its end
            return _existing(found)
        if target.is_absolute():
            here = Path(target.anchor)
            parts = list(target.parts[1:]) + parts
        else:
            parts = list(target.parts) + parts
    found.append(here.parent)
    return _existing(found)


def _existing(directories: list[Path]) -> tuple[Path, ...]:
    """Each directory, or its nearest existing ancestor when it is not there; no duplicates."""
    out: list[Path] = []
    for directory in directories:
        existing = directory
        while not existing.is_dir() and existing != existing.parent:
            existing = existing.parent
        if existing not in out:
            out.append(existing)
    return tuple(out)


WatchPlan = tuple[tuple[str, int, int], ...]
"""The directories watched, each with its device and inode: a directory replaced under the
same name is a different plan."""


def _watch_plan(*paths: Path) -> WatchPlan:
    plan = []
    directories = [d for path in paths for d in watched_directories(path)]
    for directory in dict.fromkeys(directories):
        try:
            st = directory.stat()
            plan.append((str(directory), st.st_dev, st.st_ino))
        except OSError:
            plan.append((str(directory), -1, -1))
    return tuple(plan)


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
        env: str | None = None,
        environ: Mapping[str, str] = os.environ,
        fallback: Callable[[], Snapshot | None] = lambda: None,
        also: tuple[Path, ...] = (),
    ) -> None:
        """`tracer`: one span per attempt ("catalog reload"); a push it causes is its child.
        `kept`: versions whose service count is remembered; more than the fleet's history
        (`fleet.Bounds.versions`), so that any version a rollback returns to is known.
        `env`: the environment whose overlay is merged onto `path`; `environ`: what `${VAR}`
        reads. `fallback`: what to serve when nothing is yet and the catalog builds a version
        Envoy rejected (`fleet.Fleet.fallback`: the last one proxies accepted, from the state
        directory). `also`: more files the build reads (the native engine's JWKS): watched like
        the catalog, and a change to one is a reload."""
        self._fallback = fallback
        self._also = also
        self._tracer = tracer
        self._path = path
        self._files = environments.CatalogFiles(path, env)
        self._environ = environ
        self._build = build
        self._cache = cache
        self._rejections = rejections
        self._metrics = metrics
        self._log = log
        self._on_loaded = on_loaded
        self._last_digest: bytes | None = None
        self._last_identity: tuple[tuple[int, int, int, int] | None, ...] = ()
        self.state = ReloadState(None, False, ("not loaded yet",), time.time())
        # Why the catalog is not being watched right now; None while it is.
        self.watch_error: str | None = None
        metrics.catalog_watched.set(1)
        # Services per version built, for the gauges of whatever is served: a reload's
        # snapshot, or an older one a rollback after a NACK (`Fleet`) brings back.
        self._services_of: BoundedMap[str, int] = BoundedMap(kept)
        cache.subscribe(self._served)

    @property
    def _watched(self) -> tuple[Path, ...]:
        return (*self._files.paths, *self._also)

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
        self._last_identity = _identities(self._watched)
        try:
            # (off the event loop: with an overlay, both files are decoded and merged here)
            loaded = await asyncio.to_thread(environments.read, self._files, self._environ)
        except OSError as err:
            return self._fail([f"cannot read {err.filename or self._path}: {err.strerror or err}"])
        except CatalogError as err:
            return self._fail([str(p) for p in err.problems])
        data = loaded.raw
        digest = hashlib.sha256(data + b"".join(map(_contents, self._also))).digest()
        if digest == self._last_digest:
            self._metrics.reloads.labels("unchanged").inc()
            return False
        started = time.perf_counter()
        try:
            snapshot, services = await asyncio.to_thread(self._build, data, loaded.source)
        except CatalogError as err:
            return self._fail([str(p) for p in loaded.explain(err).problems])
        self._metrics.snapshot_build_seconds.observe(time.perf_counter() - started)
        rejected = self._rejections.rejection(snapshot.version)
        if rejected is not None:
            if self._cache.current() is None and (previous := self._fallback()) is not None:
                self._cache.set(previous)
                self._on_loaded(previous)
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
                        "path": self._files.name,
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
                    "path": self._files.name,
                    "serving_version": current.version if current else None,
                    "errors": problems,
                }
            },
        )
        return False

    def _catalog_changed(self, changes: set[tuple[Change, str]]) -> bool:
        """Whether a batch of directory changes (empty: a periodic check) touched the catalog:
        its name, the file its name resolves to, or what the name leads to (its identity, as
        after a symlink swap)."""
        paths = self._watched
        names = {str(p.absolute()) for p in paths} | {str(p.resolve()) for p in paths}
        if any(changed in names for _, changed in changes):
            return True
        return _identities(paths) != self._last_identity

    def _watching(self) -> None:
        if self.watch_error is not None:
            self._log.info(
                "watching the catalog again",
                extra={"fields": {"path": self._files.name, "was": self.watch_error}},
            )
        self.watch_error = None
        self._metrics.catalog_watched.set(1)

    def _cannot_watch(self, plan: WatchPlan, err: Exception, recheck_s: float) -> None:
        why = f"cannot watch {', '.join(d for d, _, _ in plan)}: {type(err).__name__}: {err}"
        if why != self.watch_error:
            self._log.error(
                f"the catalog watcher failed; retrying every {recheck_s:g} s and checking the "
                "file meanwhile",
                exc_info=err,
                extra={"fields": {"path": self._files.name, "error": why}},
            )
        self.watch_error = why
        self._metrics.catalog_watched.set(0)

    async def watch(
        self, stop: asyncio.Event, debounce_ms: int, recheck_s: float = defaults.CATALOG_RECHECK_S
    ) -> None:
        """Reload on every change of the catalog until `stop` is set (the module docstring
        says what is watched and how a failure is handled)."""
        while not stop.is_set():
            plan = _watch_plan(*self._watched)
            try:
                async for changes in awatch(
                    *(directory for directory, _, _ in plan),
                    stop_event=stop,
                    debounce=debounce_ms,
                    step=max(1, min(debounce_ms, 10)),
                    recursive=False,
                    rust_timeout=max(1, int(recheck_s * 1000)),
                    yield_on_timeout=True,
                ):
                    self._watching()
                    if self._catalog_changed(changes):
                        await self.load()
                    if _watch_plan(*self._watched) != plan:
                        break  # a directory on the way was replaced or a symlink moved
            except Exception as err:
                self._cannot_watch(plan, err, recheck_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=recheck_s)
                if not stop.is_set() and self._catalog_changed(set()):
                    await self.load()
