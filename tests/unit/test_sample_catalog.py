"""The sample catalog ships in the package (for `sidecar up --demo` anywhere) and is the
repository's `service_catalog.json`, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import sample
from sidecar_shared import defaults

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_sample_is_the_repositorys_catalog() -> None:
    assert sample.PATH.read_bytes() == (ROOT / "service_catalog.json").read_bytes()


def test_demo_without_a_catalog_here_uses_the_packaged_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sample.demo_catalog(defaults.CATALOG, demo=True) == sample.PATH
    assert sample.demo_catalog(defaults.CATALOG, demo=False) is None  # reported as missing
    assert sample.demo_catalog("elsewhere.json", demo=True) is None  # what was asked for
    (tmp_path / defaults.CATALOG).write_text("{}")
    assert sample.demo_catalog(defaults.CATALOG, demo=True) is None  # the user's own
