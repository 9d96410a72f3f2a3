"""A catalog with a cacheable service gets one warning, in a user's words, that Envoy's HTTP
cache is work in progress in Envoy; a catalog without one gets none, and reloads do not repeat
it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from sidecar_shared.jsonlog import make_logger
from tests.support.translation import build_snapshot
from xds_server.catalog import load_catalog
from xds_server.snapshot import Snapshot
from xds_server.translate import Options
from xds_server.wip_notice import WipNotice, uses_wip_cache

ROOT = Path(__file__).resolve().parents[2]


def sample(tmp_path: Path, cacheable: bool | None) -> Snapshot:
    """The sample catalog as it is (None), or with every service's `cacheable` set."""
    data = json.loads((ROOT / "service_catalog.json").read_text())
    if cacheable is not None:
        for svc in data["services"]:
            svc["cacheable"] = cacheable
            for endpoint in svc.get("endpoints", []):
                endpoint.pop("cacheable", None)
    path = tmp_path / f"catalog-{cacheable}.json"
    path.write_text(json.dumps(data))
    return build_snapshot(load_catalog(path), Options())


def test_the_sample_uses_the_cache_and_a_catalog_without_cacheable_services_does_not(
    tmp_path: Path,
) -> None:
    assert uses_wip_cache(sample(tmp_path, None))
    assert not uses_wip_cache(sample(tmp_path, False))


def test_one_json_warning_the_first_time_a_catalog_has_a_cacheable_service(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    notice = WipNotice(make_logger("test_wip_notice", stream=out))
    notice.loaded(sample(tmp_path, False))
    assert out.getvalue() == ""
    cached = sample(tmp_path, None)
    notice.loaded(cached)
    notice.loaded(cached)  # a reload
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning"
    assert record["envoy_feature"] == "cache_v2"
    assert "work in progress" in record["message"]
    assert "threat model" in record["message"]
