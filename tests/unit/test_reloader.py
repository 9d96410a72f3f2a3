"""The reloader cannot die: any exception in a reload is a failed reload, and the watch goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import watchfiles
from prometheus_client import CollectorRegistry
from watchfiles import Change

from tests.support.catalogs import sample_data
from tests.support.wait import wait_until_async
from xds_server import reload as reload_module
from xds_server.cache import SnapshotCache
from xds_server.metrics import XdsMetrics
from xds_server.reload import Reloader, decode_and_build, watched_directories
from xds_server.snapshot import Snapshot
from xds_server.translate import Options


class Rejected(dict[str, str]):
    """The versions Envoy rejected, as the fleet reports them: version → why."""

    def rejection(self, version: str) -> str | None:
        return self.get(version)


def catalog_text(timeout_ms: int) -> str:
    """The sample catalog, one service's timeout changed: each value is another version."""
    data = sample_data()
    data["services"][3]["timeout_ms"] = timeout_ms
    return json.dumps(data)


class Rig:
    def __init__(self, directory: Path, path: Path | None = None) -> None:
        """A reloader of `path` (by default `service_catalog.json` in `directory`)."""
        self.path = path or directory / "service_catalog.json"
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache()
        self.rejected = Rejected()
        self.fail_with: Exception | None = None
        self.builds = 0
        real = decode_and_build(Options())

        def build(raw: bytes, source: str) -> tuple[Snapshot, int]:
            self.builds += 1
            if self.fail_with is not None:
                raise self.fail_with
            return real(raw, source)

        self.reloader = Reloader(
            self.path,
            build,
            self.cache,
            self.rejected,
            XdsMetrics(self.registry),
            logging.getLogger("test"),
        )

    def write(self, timeout_ms: int) -> None:
        self.path.write_text(catalog_text(timeout_ms))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def version(self) -> str | None:
        current = self.cache.current()
        return current.version if current else None


async def start_watch(rig: Rig, stop: asyncio.Event) -> asyncio.Task[None]:
    """Start the watch and return once it is seen to react: the catalog's name is touched
    (same content) until a read shows up, so no later change can fall before the watch began."""
    watcher = asyncio.create_task(rig.reloader.watch(stop, debounce_ms=5))
    deadline = asyncio.get_running_loop().time() + 10
    before = rig.metric("xds_catalog_reloads_total", result="unchanged")
    while rig.metric("xds_catalog_reloads_total", result="unchanged") == before:
        assert asyncio.get_running_loop().time() < deadline, "the watch never reacted"
        os.utime(rig.path, follow_symlinks=False)
        for _ in range(10):
            await asyncio.sleep(0.01)
            if rig.metric("xds_catalog_reloads_total", result="unchanged") != before:
                break
    return watcher


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def test_an_exception_in_the_build_is_a_failed_reload_and_the_last_version_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.write(1000)
        assert await rig.reloader.load()
        good = rig.version()
        rig.write(2000)
        rig.fail_with = ValueError("Value out of range: 4294967296")
        assert await rig.reloader.load() is False
        assert rig.version() == good
        assert rig.metric("xds_catalog_valid") == 0
        assert rig.metric("xds_catalog_reloads_total", result="error") == 1
        assert not rig.reloader.state.ok
        assert "Value out of range" in rig.reloader.state.problems[0]
        rig.fail_with = None
        assert await rig.reloader.load()
        assert rig.version() != good
        assert rig.metric("xds_catalog_valid") == 1

    with caplog.at_level(logging.ERROR, "test"):
        run(scenario)
    assert any(r.exc_info for r in caplog.records), "the traceback is logged"


def test_a_bad_file_at_startup_is_a_failed_load_not_a_crash(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.fail_with = RuntimeError("boom")

    async def scenario() -> None:
        rig.write(1000)
        assert await rig.reloader.load() is False
        assert rig.version() is None

    run(scenario)


def test_the_watch_survives_a_failing_build_and_serves_the_next_good_edit(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.write(1000)
        await rig.reloader.load()
        good = rig.version()
        stop = asyncio.Event()
        watcher = await start_watch(rig, stop)
        rig.fail_with = RuntimeError("injected")
        rig.write(2000)
        await wait_until_async(
            lambda: rig.metric("xds_catalog_reloads_total", result="error") >= 1,
            what="the failed reload",
        )
        assert not watcher.done()
        rig.fail_with = None
        rig.write(3000)
        await wait_until_async(lambda: rig.version() not in (None, good), what="the next good edit")
        stop.set()
        await watcher

    run(scenario)


def test_other_files_in_the_directory_are_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)
    # The names in each batch of changes the watcher has handled.
    handled: list[set[str]] = []
    catalog_changed = rig.reloader._catalog_changed

    def spy(changes: set[tuple[Change, str]]) -> bool:
        handled.append({Path(p).name for _, p in changes})
        return catalog_changed(changes)

    monkeypatch.setattr(rig.reloader, "_catalog_changed", spy)

    async def scenario() -> None:
        rig.write(1000)
        await rig.reloader.load()
        stop = asyncio.Event()
        watcher = await start_watch(rig, stop)
        reads = rig.metric("xds_catalog_reloads_total", result="unchanged")
        audit = tmp_path / "audit.log"
        for i in range(20):
            with audit.open("a") as f:
                f.write(f"line {i}\n")
            await asyncio.sleep(0.01)
        # A file made after the audit lines: once its batch is handled, so are theirs.
        (tmp_path / "marker").write_text("after the audit lines")
        await wait_until_async(
            lambda: any("marker" in names for names in handled), what="the marker's batch"
        )
        assert rig.metric("xds_catalog_reloads_total", result="unchanged") == reads
        # The catalog itself, same content: read (once, or twice when its change is also seen
        # through a batch of the other file's changes), never rebuilt. Saved in one step: an
        # in-place write can be read half-written.
        tmp = tmp_path / "next.tmp"
        tmp.write_text(rig.path.read_text())
        os.replace(tmp, rig.path)
        await wait_until_async(
            lambda: rig.metric("xds_catalog_reloads_total", result="unchanged") > reads,
            what="the catalog's own change",
        )
        assert rig.builds == 1
        stop.set()
        await watcher

    run(scenario)


def test_a_configmap_symlink_swap_is_seen(tmp_path: Path) -> None:
    def version_dir(name: str, timeout_ms: int) -> None:
        (tmp_path / name).mkdir()
        data: dict[str, Any] = sample_data()
        data["services"][3]["timeout_ms"] = timeout_ms
        (tmp_path / name / "service_catalog.json").write_text(json.dumps(data))

    version_dir("..v1", 1000)
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "service_catalog.json").symlink_to("..data/service_catalog.json")
    rig = Rig(tmp_path)

    async def scenario() -> None:
        await rig.reloader.load()
        first = rig.version()
        stop = asyncio.Event()
        watcher = await start_watch(rig, stop)
        version_dir("..v2", 2000)
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        await wait_until_async(lambda: rig.version() != first, what="the swapped catalog")
        stop.set()
        await watcher

    run(scenario)


def test_a_version_envoy_rejected_is_not_served_again_and_the_next_edit_is(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.write(1000)
        assert await rig.reloader.load()
        good = rig.cache.current()
        rig.write(2000)
        assert await rig.reloader.load()
        bad = rig.version()
        assert good is not None and bad is not None and bad != good.version
        # Envoy rejected it and the fleet went back (what `fleet.Fleet` does).
        rig.rejected[bad] = f"version {bad} was rejected by Envoy (node n, clusters): boom"
        rig.cache.set(good)
        rig.reloader.rejected_by_envoy(f"version {bad} was rejected by Envoy: boom")
        assert rig.reloader.state.ok is False
        assert rig.metric("xds_catalog_reloads_total", result="rejected") == 1
        assert rig.metric("xds_catalog_valid") == 0
        rig.write(1000)
        assert await rig.reloader.load() is False  # the good version again: nothing changes
        # The rejected content saved again (formatted differently) is refused, saying why.
        data = sample_data()
        data["services"][3]["timeout_ms"] = 2000
        rig.path.write_text(json.dumps(data, indent=4))
        assert await rig.reloader.load() is False
        assert rig.reloader.state.problems == (
            f"version {bad} was rejected by Envoy (node n, clusters): boom",
        )
        assert rig.metric("xds_catalog_reloads_total", result="rejected") == 2
        # Any other edit moves forward.
        rig.write(3000)
        assert await rig.reloader.load()
        assert rig.version() not in (good.version, bad)
        assert rig.reloader.state.ok

    run(scenario)


def test_a_catalog_directory_removed_and_made_again_is_watched_again(tmp_path: Path) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    rig = Rig(directory)

    async def scenario() -> None:
        rig.write(1000)
        await rig.reloader.load()
        first = rig.version()
        stop = asyncio.Event()
        watcher = await start_watch(rig, stop)
        # rm -rf conf; mkdir conf; write the file
        shutil.rmtree(directory)
        directory.mkdir()
        rig.write(2000)
        await wait_until_async(
            lambda: rig.version() != first and rig.reloader.state.ok, what="the new file"
        )
        second = rig.version()
        # ... and the new directory is the one watched from now on.
        rig.write(3000)
        await wait_until_async(lambda: rig.version() != second, what="an edit after it")
        assert rig.reloader.watch_error is None
        assert rig.metric("xds_catalog_watched") == 1
        stop.set()
        await watcher

    run(scenario)


def test_a_release_directory_symlink_swap_is_seen(tmp_path: Path) -> None:
    """Deploy tools' layout: `current -> releases/1`, swapped to `releases/2` in one rename."""
    for release, timeout_ms in (("1", 1000), ("2", 2000)):
        (tmp_path / "releases" / release).mkdir(parents=True)
        (tmp_path / "releases" / release / "service_catalog.json").write_text(
            catalog_text(timeout_ms)
        )
    (tmp_path / "current").symlink_to("releases/1")
    rig = Rig(tmp_path, tmp_path / "current" / "service_catalog.json")

    async def scenario() -> None:
        await rig.reloader.load()
        first = rig.version()
        stop = asyncio.Event()
        watcher = await start_watch(rig, stop)
        (tmp_path / "current.new").symlink_to("releases/2")
        os.replace(tmp_path / "current.new", tmp_path / "current")
        await wait_until_async(lambda: rig.version() != first, what="release 2")
        second = rig.version()
        # An edit inside the new release is seen too (its directory is watched now).
        (tmp_path / "releases" / "2" / "service_catalog.json").write_text(catalog_text(3000))
        await wait_until_async(lambda: rig.version() != second, what="the edit in release 2")
        assert rig.reloader.state.ok
        stop.set()
        await watcher

    run(scenario)


def test_a_catalog_that_is_a_symlink_into_another_directory_follows_its_target(
    tmp_path: Path,
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "conf").mkdir()
    target = tmp_path / "data" / "catalog-v1.json"
    target.write_text(catalog_text(1000))
    link = tmp_path / "conf" / "service_catalog.json"
    link.symlink_to(Path("..") / "data" / "catalog-v1.json")
    rig = Rig(tmp_path, link)

    async def scenario() -> None:
        await rig.reloader.load()
        first = rig.version()
        stop = asyncio.Event()
        watcher = await start_watch(rig, stop)
        # Saved in the other directory by write-and-rename, then edited in place.
        tmp = tmp_path / "data" / "catalog.tmp"
        tmp.write_text(catalog_text(2000))
        os.replace(tmp, target)
        await wait_until_async(lambda: rig.version() != first, what="the renamed target")
        second = rig.version()
        target.write_text(catalog_text(3000))
        await wait_until_async(lambda: rig.version() != second, what="the target edited")
        stop.set()
        await watcher

    run(scenario)


def test_a_watch_that_cannot_start_is_reported_retried_and_the_file_checked_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)
    refuse = {"left": 3}
    real_awatch = watchfiles.awatch

    def flaky_awatch(*paths: Any, **kw: Any) -> Any:
        if refuse["left"] > 0:
            refuse["left"] -= 1
            raise OSError(28, "OS file watch limit reached")
        return real_awatch(*paths, **kw)

    monkeypatch.setattr(reload_module, "awatch", flaky_awatch)

    async def scenario() -> None:
        rig.write(1000)
        await rig.reloader.load()
        first = rig.version()
        stop = asyncio.Event()
        watcher = asyncio.create_task(rig.reloader.watch(stop, debounce_ms=5, recheck_s=0.2))
        await wait_until_async(lambda: rig.reloader.watch_error is not None, what="the failure")
        assert "OS file watch limit reached" in (rig.reloader.watch_error or "")
        assert str(tmp_path) in (rig.reloader.watch_error or "")
        assert rig.metric("xds_catalog_watched") == 0
        # An edit while nothing is watched is still found by the periodic check.
        rig.write(2000)
        await wait_until_async(lambda: rig.version() != first, what="the edit, unwatched")
        # The watch is retried until it works, and says so.
        await wait_until_async(lambda: rig.reloader.watch_error is None, what="the watch back")
        assert rig.metric("xds_catalog_watched") == 1
        assert refuse["left"] == 0
        stop.set()
        await watcher

    run(scenario)


def test_a_watch_failure_is_logged_once_per_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    tries: list[int] = []

    def broken_awatch(*paths: Any, **kw: Any) -> Any:
        tries.append(1)
        raise OSError(28, "OS file watch limit reached")

    monkeypatch.setattr(reload_module, "awatch", broken_awatch)

    async def scenario() -> None:
        rig.write(1000)
        await rig.reloader.load()
        stop = asyncio.Event()
        watcher = asyncio.create_task(rig.reloader.watch(stop, debounce_ms=5, recheck_s=0.05))
        await wait_until_async(lambda: len(tries) >= 4, what="several retries, failing alike")
        stop.set()
        await watcher

    with caplog.at_level(logging.ERROR, logger="test"):
        run(scenario)
    failures = [r for r in caplog.records if "catalog watcher failed" in r.getMessage()]
    assert len(failures) == 1


def test_the_directories_watched_follow_every_symlink_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "releases" / "7").mkdir(parents=True)
    (tmp_path / "releases" / "7" / "real.json").write_text("{}")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "current").symlink_to("../releases/7")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "catalog.json").symlink_to(tmp_path / "app" / "current" / "real.json")
    assert watched_directories(tmp_path / "etc" / "catalog.json") == (
        tmp_path / "etc",
        tmp_path / "app",
        tmp_path / "releases" / "7",
    )
    # A directory that is not there is watched through its nearest existing ancestor.
    assert watched_directories(tmp_path / "gone" / "deeper" / "catalog.json") == (tmp_path,)
    # A symlink loop ends the walk instead of hanging it.
    (tmp_path / "loop").symlink_to("loop")
    assert watched_directories(tmp_path / "loop" / "catalog.json") == (tmp_path,)
