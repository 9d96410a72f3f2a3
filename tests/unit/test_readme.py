"""The README and `docs/` document what operators configure against: the gRPC health service
names (README), every identity-provider preset and the interop settings
(docs/authorization.md), every Redis URL form (docs/rate-limits.md). The README stays a short
front page: at most 200 lines, linking every file in `docs/`, and no relative link in these
files points at a file or heading that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ext_authz import idp
from ext_authz.ratelimit import redis_url
from sidecar_shared.contract import AUTHZ_HEALTH_SERVICE, XDS_HEALTH_SERVICE
from tests.support.catalogs import ROOT

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
AUTHORIZATION = (DOCS / "authorization.md").read_text()
RATE_LIMITS = (DOCS / "rate-limits.md").read_text()

MAX_README_LINES = 200
LINKED = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md"]
LINKED += sorted(DOCS.glob("*.md"))


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section '{title}'"
    return match.group(1)


@pytest.mark.parametrize("name", [XDS_HEALTH_SERVICE, AUTHZ_HEALTH_SERVICE])
def test_each_grpc_health_service_name_is_documented(name: str) -> None:
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("name", sorted(idp.PRESETS))
def test_each_preset_has_a_row_and_a_worked_example(name: str) -> None:
    text = section(AUTHORIZATION, "Identity providers")
    assert f"| `{name}` |" in text
    assert f"SIDECAR_IDP={name} " in text


@pytest.mark.parametrize("scheme", sorted(redis_url._SCHEMES))
def test_each_redis_url_form_is_documented(scheme: str) -> None:
    assert f"`{scheme}://" in RATE_LIMITS


@pytest.mark.parametrize(
    ("doc", "setting"),
    [
        ("authorization.md", "SIDECAR_IDP"),
        ("authorization.md", "SIDECAR_JWKS_CA_FILE"),
        ("authorization.md", "SIDECAR_CLAIM_ROLES"),
        ("rate-limits.md", "SIDECAR_REDIS_URL"),
    ],
)
def test_each_interop_setting_is_in_a_settings_table(doc: str, setting: str) -> None:
    text = (DOCS / doc).read_text()
    assert re.search(rf"^\| [^|]*`{setting}[`=]", text, re.M), setting


def test_the_readme_is_a_short_front_page() -> None:
    assert len(README.splitlines()) <= MAX_README_LINES


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_the_readme_links_every_docs_file(doc: str) -> None:
    assert f"](docs/{doc})" in README


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces become hyphens."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    links = relative_links(page.read_text())
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), f"{page.name}: {link} names no file"
        if anchor:
            assert anchor in anchors(target.read_text()), f"{page.name}: {link} names no heading"


def test_the_link_checker_sees_links() -> None:
    text = "[a](docs/x.md#y) [b](https://e.com) `[c](d)` [`e`](#f)"
    assert relative_links(text) == ["docs/x.md#y", "#f"]
    assert "alerts-deployprometheusalertsyml" in anchors(
        "## Alerts (`deploy/prometheus/alerts.yml`)"
    )
