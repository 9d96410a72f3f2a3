"""The sample catalog, shipped inside the package (`sample_catalog.json`) so that
`sidecar up --demo` runs from any directory, not only from a checkout. The repository's
`service_catalog.json` is the same file; a test keeps them identical."""

from __future__ import annotations

from pathlib import Path

from sidecar_shared import defaults

PATH = Path(__file__).resolve().with_name("sample_catalog.json")


def demo_catalog(requested: str, demo: bool) -> Path | None:
    """The packaged sample, when `--demo` runs with the default catalog name and there is no
    such file in the working directory; else None (the requested path is used, and a missing
    file is reported as usual)."""
    if demo and requested == defaults.CATALOG and not Path(requested).exists():
        return PATH
    return None
