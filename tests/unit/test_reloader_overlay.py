"""The reloader with an environment: it follows the base and the overlay, serves the merged
catalog, and keeps the last good merged version when either file goes bad."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.support.catalogs import sample_data
from tests.support.wait import wait_until_async
from xds_server.cache import SnapshotCache
from xds_server.metrics import XdsMetrics
from xds_server.reload import Reloader, decode_and_build
from xds_server.translate import Options


class NoRejections:
    def rejection(self, version: str) -> str | None:
        return None


def test_a_change_to_the_overlay_alone_reloads_and_a_bad_one_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    base = tmp_path / "service_catalog.json"
    overlay = tmp_path / "service_catalog.qa.json"
    base.write_text(json.dumps(sample_data()))
    overlay.write_text(json.dumps({"services": {"admin": {"timeout_ms": 900}}}))
    cache = SnapshotCache()
    reloader = Reloader(
        base,
        decode_and_build(Options()),
        cache,
        NoRejections(),
        XdsMetrics(CollectorRegistry()),
        logging.getLogger("test"),
        env="qa",
        environ={},
    )

    def version() -> str | None:
        current = cache.current()
        return current.version if current else None

    async def scenario() -> None:
        assert await reloader.load()
        first = version()
        stop = asyncio.Event()
        watcher = asyncio.create_task(reloader.watch(stop, debounce_ms=5, recheck_s=0.2))
        try:
            overlay.write_text(json.dumps({"services": {"admin": {"timeout_ms": 800}}}))
            await wait_until_async(lambda: version() != first, timeout=20, what="overlay seen")
            second = version()
            overlay.write_text(json.dumps({"services": {"admin": {"timeout_ms": 0}}}))
            await wait_until_async(lambda: not reloader.state.ok, timeout=20, what="refused")
            assert version() == second
            assert reloader.state.problems == (
                f"{overlay}: services.admin.timeout_ms: must be greater than 0 (got 0)",
            )
            overlay.unlink()  # a missing overlay: refused too, naming it
            await wait_until_async(
                lambda: reloader.state.problems[0].startswith(f"cannot read {overlay}"),
                timeout=20,
                what="the missing overlay reported",
            )
            assert version() == second
        finally:
            stop.set()
            await watcher

    asyncio.run(scenario())
