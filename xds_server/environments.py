"""The catalog a server loads: the base file, an environment's overlay beside it, substituted.

`read` is the one loading entry point for the reloader and for `sidecar validate`, `render`
and `diff`: it reads the base (and the overlay, when an environment is chosen), rejects
duplicate keys in either, merges them (`overlays.merge`), substitutes `${VAR}`
(`substitute.substitute`) and returns the JSON the build step validates, with what is needed
to tell each problem against the file and path it came from (`Loaded.explain`).

Environment `NAME` reads `service_catalog.NAME.json` beside `service_catalog.json` (the base's
stem, a dot, the name, the base's suffix). `schema` is not an environment: that file is the
catalog's JSON Schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar_shared.errors import SettingsError
from xds_server.catalog import CatalogError, Problem, decode_json
from xds_server.overlays import Origins, merge
from xds_server.substitute import substitute

ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESERVED = frozenset({"schema"})


def check_env_name(env: str) -> str:
    """`env` when it can name an environment; raise SettingsError otherwise."""
    if not ENV_NAME.fullmatch(env) or env in RESERVED:
        raise SettingsError(
            f"--env {env!r}: an environment name is 1-64 letters, digits, '_' or '-' "
            f"(not {', '.join(sorted(RESERVED))})"
        )
    return env


def overlay_path(base: Path, env: str) -> Path:
    return base.with_name(f"{base.stem}.{env}{base.suffix}")


def env_names(base: Path) -> list[str]:
    """Every environment with an overlay beside `base`, sorted."""
    found = []
    for path in base.parent.glob(f"{glob_escape(base.stem)}.*{glob_escape(base.suffix)}"):
        env = path.name[len(base.stem) + 1 : len(path.name) - len(base.suffix)]
        if ENV_NAME.fullmatch(env) and env not in RESERVED:
            found.append(env)
    return sorted(found)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass(frozen=True)
class CatalogFiles:
    """The base catalog and, for an environment, its overlay."""

    base: Path
    env: str | None = None

    @property
    def overlay(self) -> Path | None:
        return overlay_path(self.base, self.env) if self.env else None

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files read (the reloader watches each)."""
        return (self.base,) if self.overlay is None else (self.base, self.overlay)

    @property
    def name(self) -> str:
        return str(self.base) if self.overlay is None else f"{self.base} + {self.overlay}"


@dataclass(frozen=True)
class Loaded:
    raw: bytes  # the catalog's JSON as the build step takes it
    source: str  # its name in messages
    origins: Origins | None = None  # None: the base alone, whose paths are its own

    def explain(self, err: CatalogError) -> CatalogError:
        """A build's problems (paths into the merged document) told against their files."""
        return err if self.origins is None else self.origins.error(err)


def _decode(raw: bytes, name: str, prefixed: bool) -> object:
    try:
        return decode_json(raw, name)
    except CatalogError as err:
        if not prefixed:
            raise
        raise CatalogError(
            [Problem(f"{name}: {p.path}" if p.path else name, p.message) for p in err.problems],
            name,
        ) from None


def read(files: CatalogFiles, environ: Mapping[str, str]) -> Loaded:
    """The catalog `files` make, substituted from `environ`; raise OSError when a file cannot
    be read (`filename` says which), CatalogError for a problem found before validation."""
    raw = files.base.read_bytes()
    overlay = files.overlay
    if overlay is None:
        if b"${" not in raw:
            return Loaded(raw, files.name)  # nothing to do: the file as it is
        data = _decode(raw, files.name, prefixed=False)
        data, problems = substitute(data, environ)
        if problems:
            raise CatalogError(problems, files.name)
        return Loaded(_encode(data), files.name)
    overlay_raw = overlay.read_bytes()
    base_data = _decode(raw, str(files.base), prefixed=True)
    overlay_data = _decode(overlay_raw, str(overlay), prefixed=True)
    try:
        merged = merge(base_data, overlay_data, str(files.base), str(overlay))
    except CatalogError as err:
        raise CatalogError(err.problems, files.name) from None
    data, problems = substitute(merged.data, environ)
    if problems:
        raise merged.origins.error(CatalogError(problems, files.name))
    return Loaded(_encode(data), files.name, merged.origins)


def _encode(data: object) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def load(files: CatalogFiles, environ: Mapping[str, str]) -> Loaded:
    """`read`, an unreadable file being a CatalogError naming it."""
    try:
        return read(files, environ)
    except OSError as err:
        name = err.filename or files.name
        raise CatalogError(
            [Problem("", f"cannot read {name}: {err.strerror or err}")], files.name
        ) from None
