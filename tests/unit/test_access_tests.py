"""The catalog's access tests: run by `sidecar validate` and every reload; a failing one refuses
the catalog as a type error does, naming the test (`tests[i]`) and why."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.support.catalogs import sample_data, write_json
from xds_server.builder import SnapshotBuilder
from xds_server.cache import SnapshotCache
from xds_server.catalog import CatalogError, parse_catalog
from xds_server.metrics import XdsMetrics
from xds_server.reload import Reloader
from xds_server.translate import Options

DENY_DELETE = {
    "name": "a customer may not delete an order",
    "request": {"method": "DELETE", "path": "/orders/1"},
    "claims": {"sub": "u1", "roles": ["customer"], "tenant_id": "acme"},
    "expect": 403,
}


class NoRejections:
    def rejection(self, version: str) -> str | None:
        return None


def with_tests(*tests: dict[str, Any]) -> dict[str, Any]:
    data = sample_data()
    data["tests"] = [copy.deepcopy(t) for t in tests]
    return data


def loosened(data: dict[str, Any]) -> dict[str, Any]:
    """The edit the tests exist to catch: customers may now delete orders."""
    data = copy.deepcopy(data)
    data["roles"]["customer"].append("orders:delete")
    return data


def build(data: dict[str, Any]) -> None:
    SnapshotBuilder(Options())(json.dumps(data).encode(), "catalog")


def test_the_sample_catalog_carries_tests_and_they_pass() -> None:
    data = sample_data()
    assert len(data["tests"]) >= 3
    assert {t["expect"] for t in data["tests"]} >= {200, 401, 403}
    build(data)


def test_a_passing_test_lets_the_catalog_build() -> None:
    build(with_tests(DENY_DELETE))


def test_a_failing_test_refuses_the_catalog_naming_the_test_and_why() -> None:
    data = loosened(with_tests(DENY_DELETE, DENY_DELETE))
    data["tests"][0] = {**DENY_DELETE, "name": "harmless", "expect": 200}
    with pytest.raises(CatalogError) as caught:
        build(data)
    (problem,) = caught.value.problems
    assert problem.path == "tests[1]"
    assert "'a customer may not delete an order'" in problem.message
    assert "expected 403, got 200" in problem.message


def test_the_reason_and_step_of_an_unexpected_denial_are_given() -> None:
    data = with_tests({**DENY_DELETE, "expect": 200})
    with pytest.raises(CatalogError) as caught:
        build(data)
    message = caught.value.problems[0].message
    assert "got 403 role_not_allowed at the role step (route orders)" in message


def test_a_test_of_a_dry_run_service_checks_the_denial_it_would_make() -> None:
    data = with_tests(DENY_DELETE)
    data["services"][0]["enforce"] = "dry_run"
    build(data)  # would_deny 403 is what the test states
    with pytest.raises(CatalogError):
        build(loosened(data))


@pytest.mark.parametrize(
    ("test", "path"),
    [
        ({**DENY_DELETE, "expect": 418}, "tests[0].expect"),
        ({**DENY_DELETE, "request": {"method": "BREW", "path": "/x"}}, "tests[0].request.method"),
        ({**DENY_DELETE, "request": {"method": "GET", "path": "x"}}, "tests[0].request.path"),
        ({**DENY_DELETE, "surprise": 1}, "tests[0].surprise"),
        ({k: v for k, v in DENY_DELETE.items() if k != "name"}, "tests[0].name"),
    ],
)
def test_a_malformed_test_is_a_type_error_at_its_path(test: dict[str, Any], path: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(with_tests(test))
    assert path in [p.path for p in caught.value.problems]


def test_sidecar_validate_runs_the_tests(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    write_json(good, with_tests(DENY_DELETE))
    write_json(bad, loosened(with_tests(DENY_DELETE)))

    def validate(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    passed = validate(good)
    assert passed.returncode == 0
    assert "1 access test(s) passed" in passed.stdout
    failed = validate(bad)
    assert failed.returncode == 1
    assert "tests[0]" in failed.stdout + failed.stderr


def test_the_reloader_refuses_a_catalog_whose_tests_fail_and_keeps_serving(
    tmp_path: Path,
) -> None:
    path = tmp_path / "service_catalog.json"
    registry = CollectorRegistry()
    cache = SnapshotCache()
    reloader = Reloader(
        path,
        SnapshotBuilder(Options()),
        cache,
        NoRejections(),
        XdsMetrics(registry),
        logging.getLogger("test"),
    )

    async def scenario() -> None:
        write_json(path, with_tests(DENY_DELETE))
        assert await reloader.load()
        current = cache.current()
        assert current is not None
        write_json(path, loosened(with_tests(DENY_DELETE)))
        assert await reloader.load() is False
        assert cache.current() is current
        assert not reloader.state.ok
        assert any(p.startswith("tests[0]: ") for p in reloader.state.problems)
        assert registry.get_sample_value("xds_catalog_valid") == 0

    asyncio.run(scenario())
