"""The xDS server's /metrics, as an operator reads them while a proxy (the test ADS client,
which answers as Envoy does) connects, takes every edit and rejects one: pushes and ACKs per
type, NACKs, the build time of every reload and the version being served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import stack, wait
from tests.support.ads_client import AdsClient
from tests.support.metrics import scraped, scraped_samples
from xds_server import typeurls

TYPES = tuple(typeurls.SHORT_NAMES[t] for t in typeurls.PUSH_ORDER)
REJECTED_SERVICE = "rejected-by-the-proxy"


def edit(catalog: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(catalog.read_text())
    change(data)
    tmp = catalog.with_name(catalog.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, catalog)


@dataclass(frozen=True)
class Seen:
    """One scrape of the xDS server's /metrics, read as a dashboard would."""

    text: str

    def responses(self, short: str) -> float:
        return scraped(self.text, "xds_responses_total", type=short)

    def acks(self, short: str) -> float:
        return scraped(self.text, "xds_acks_total", type=short)

    def nacks(self, short: str) -> float:
        return scraped(self.text, "xds_nacks_total", type=short)

    def builds(self) -> tuple[float, float]:
        """xds_snapshot_build_seconds: (count, sum)."""
        return (
            scraped(self.text, "xds_snapshot_build_seconds_count"),
            scraped(self.text, "xds_snapshot_build_seconds_sum"),
        )

    def snapshot_versions(self) -> list[tuple[str, float]]:
        """What xds_snapshot_info shows: (version, value) of each of its samples."""
        return [
            (s.labels.get("version", ""), s.value)
            for s in scraped_samples(self.text, "xds_snapshot_info")
        ]

    def services(self) -> float:
        return scraped(self.text, "xds_catalog_services")

    def consistent(self) -> None:
        """Every answer counted is to a response sent. (Not every response is answered: one
        superseded before its ACK arrived is answered with a stale nonce, not counted.)"""
        for t in TYPES:
            counts = (self.responses(t), self.acks(t), self.nacks(t))
            assert counts[1] + counts[2] <= counts[0], (t, counts)


def reject_the_marked_service(type_url: str, resources: Mapping[str, bytes]) -> str | None:
    """The proxy's rule: a cluster list holding `REJECTED_SERVICE` is NACKed."""
    if type_url == typeurls.CLUSTER and REJECTED_SERVICE in resources:
        return f"cluster {REJECTED_SERVICE}: rejected by the test proxy"
    return None


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_pushes_acks_nacks_and_reloads_show_on_the_metrics_page(
    xds: stack.XdsServer, protocol: str
) -> None:
    def scrape() -> Seen:
        return Seen(xds.metrics())

    async def until(check: Callable[[], Any], what: str) -> Any:
        """Poll `check` (blocking HTTP) off the event loop, so the client keeps answering."""
        return await asyncio.to_thread(wait.wait_until, check, 10.0, 0.02, what)

    def in_sync(client: AdsClient) -> str | None:
        """The version served, once the client has ACKed every type of it and the server has
        recorded those ACKs (counted at the same time)."""
        status = xds.status()
        held = client.has(status["versions"]) and xds.synced(client.node_id or "")
        return status["version"] if held else None

    async def scenario() -> None:
        # Before any proxy: the version served, one build (the start-up load), no pushes.
        # (The status page is up before the first load ends.)
        first = await until(xds.version, "the catalog served")
        before = await asyncio.to_thread(scrape)
        assert before.snapshot_versions() == [(first, 1)]
        assert before.builds()[0] == 1
        services = len(json.loads(xds.catalog.read_text())["services"])
        assert before.services() == services
        assert all(before.responses(t) == before.acks(t) == before.nacks(t) == 0 for t in TYPES)

        client = AdsClient(f"127.0.0.1:{xds.port}", "metrics-proxy", protocol)
        running = asyncio.create_task(client.run())
        try:
            # Connected and in sync: every type pushed and ACKed, nothing NACKed.
            assert await until(lambda: in_sync(client), "the client in sync") == first
            synced = await asyncio.to_thread(scrape)
            synced.consistent()
            assert all(synced.responses(t) >= 1 and synced.acks(t) >= 1 for t in TYPES)
            assert all(synced.nacks(t) == 0 for t in TYPES)

            # A reload: built once more (and timed), the new version is the one shown, its
            # clusters pushed and ACKed.
            edit(xds.catalog, lambda d: d["services"][0].update(connect_timeout_ms=2500))
            second = await until(lambda: (v := in_sync(client)) != first and v, "the edit ACKed")
            reloaded = await asyncio.to_thread(scrape)
            reloaded.consistent()
            assert reloaded.responses("clusters") > synced.responses("clusters")
            assert reloaded.builds()[0] == synced.builds()[0] + 1
            assert reloaded.builds()[1] > synced.builds()[1]
            assert reloaded.snapshot_versions() == [(second, 1)]
            assert reloaded.acks("clusters") > synced.acks("clusters")
            assert all(reloaded.nacks(t) == 0 for t in TYPES)

            # The proxy rejects the next edit's clusters: one NACK, of clusters. Every proxy
            # is rolled back to the version it last ACKed, and that is the version shown.
            client.reject = reject_the_marked_service
            edit(
                xds.catalog,
                lambda d: d["services"].append(
                    {
                        "service_name": REJECTED_SERVICE,
                        "base_path": "/rejected",
                        "internal_url": "http://127.0.0.1:9",
                    }
                ),
            )

            nacked = await until(
                lambda: (m := scrape()).nacks("clusters") >= 1 and m, "the NACK counted"
            )
            assert nacked.builds()[0] > reloaded.builds()[0]
            rolled_back = await until(
                lambda: (s := xds.status())["rejected"] and s["version"] == second and s,
                "the rollback",
            )
            assert rolled_back["rejected"][0]["rolled_back_to"] == second
            assert await until(lambda: in_sync(client), "the rollback ACKed") == second

            settled = await asyncio.to_thread(scrape)
            settled.consistent()
            assert settled.acks("clusters") > reloaded.acks("clusters"), "the rollback ACKed"
            assert {t: settled.nacks(t) for t in TYPES} == {
                "clusters": 1,
                "endpoints": 0,
                "listeners": 0,
                "routes": 0,
            }
            assert settled.snapshot_versions() == [(second, 1)], "the version served after rollback"
            assert settled.services() == services, "the services served after rollback"
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    asyncio.run(scenario())
