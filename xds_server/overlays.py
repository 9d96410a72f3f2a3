"""An environment's overlay merged onto the base catalog, remembering where each value came from.

The rule (docs/environments.md) is JSON Merge Patch (RFC 7386) with two exceptions:
- `services` is matched by `service_name`, never by position. In the overlay it is an object
  keyed by service name (`{"orders": {"timeout_ms": 500}, "legacy": null}`) or a list of
  objects that each name their service (`[{"service_name": "orders", "timeout_ms": 500}]`).
  A patch merges onto the base's service of that name (RFC 7386 inside it: a nested object
  merges key by key, a list or a scalar replaces, `null` removes the field); `null` under a
  name removes the service; a name the base lacks adds a service (in the overlay's order, after
  the base's). Removing a service the base lacks, or renaming one inside its patch, is an error
  (a typo must not pass silently).
- the overlay's own `$schema` is not merged (it describes the overlay, not the catalog).
`roles` is an object keyed by role name, so plain RFC 7386 already matches it by key: a role's
list of permissions replaces the base's, `null` removes the role.

`merge` is pure: it never alters its arguments, and returns the merged document with the
origin of every value the overlay set or moved, so that a problem found in the merged document
(`catalog.Problem`, a JSON path into it) can be told against the file and the path in that file
it came from (`Origins.locate`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from xds_server.catalog import CatalogError, Problem, json_path

Loc = tuple[int | str, ...]


@dataclass(frozen=True)
class Origins:
    """Merged JSON path → (file, path in that file) for each subtree whose file or place differs
    from the base's same path; everything else is the base's, at the same path."""

    base: str
    spans: dict[str, tuple[str, str]] = field(default_factory=dict)

    def locate(self, path: str) -> tuple[str, str]:
        """The file and the path in it that the merged document's `path` came from: the
        longest recorded prefix of `path` (ending at a `.` or `[` boundary) decides."""
        cuts = [len(path)] + [i for i in range(len(path) - 1, 0, -1) if path[i] in ".["]
        for cut in cuts:
            found = self.spans.get(path[:cut])
            if found is not None:
                name, start = found
                rest = path[cut:]
                if not start:
                    rest = rest.removeprefix(".")
                return name, start + rest
        return self.base, path

    def problem(self, p: Problem) -> Problem:
        """`p` (a path into the merged document) told as `FILE: PATH` (the path in that file);
        a problem without a path is left as it is."""
        if not p.path:
            return p
        name, path = self.locate(p.path)
        return Problem(f"{name}: {path}" if path else name, p.message)

    def error(self, err: CatalogError) -> CatalogError:
        return CatalogError([self.problem(p) for p in err.problems], err.source)


@dataclass(frozen=True)
class Merged:
    data: Any  # the base as it is when it is not an object (its validation says why)
    origins: Origins


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch(target, patch); neither argument is altered."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _record(spans: dict[str, tuple[str, str]], at: Loc, patch: Any, name: str, src: Loc) -> None:
    """Mark what `patch` (at `src` in file `name`) sets at `at` in the merged document."""
    if isinstance(patch, dict):
        for key, value in patch.items():
            if value is not None:
                _record(spans, (*at, key), value, name, (*src, key))
    else:
        spans[json_path(at)] = (name, json_path(src))


def _service_patches(services: Any, name: str) -> tuple[dict[str, tuple[Any, Loc]], list[Problem]]:
    """The overlay's `services`, as service name → (patch or None, where it is in the file)."""
    out: dict[str, tuple[Any, Loc]] = {}
    problems: list[Problem] = []

    def bad(loc: Loc, message: str) -> None:
        problems.append(Problem(f"{name}: {json_path(loc)}", message))

    if isinstance(services, dict):
        for svc, patch in services.items():
            loc: Loc = ("services", svc)
            if patch is not None and not isinstance(patch, dict):
                bad(loc, "should be an object (a patch of the service) or null (to remove it)")
            elif isinstance(patch, dict) and patch.get("service_name", svc) != svc:
                bad((*loc, "service_name"), f"must be {svc!r}, the name it is listed under")
            else:
                out[svc] = (patch, loc)
    elif isinstance(services, list):
        for i, patch in enumerate(services):
            svc = patch.get("service_name") if isinstance(patch, dict) else None
            if not isinstance(svc, str):
                bad(("services", i), "should be an object naming its service (service_name)")
            elif svc in out:
                bad(("services", i, "service_name"), f"{svc!r} is patched twice")
            else:
                out[svc] = (patch, ("services", i))
    else:
        bad(("services",), "should be an object keyed by service name, or a list of services")
    return out, problems


def merge(base: Any, overlay: Any, base_name: str, overlay_name: str) -> Merged:
    """The overlay merged onto the base catalog (both decoded JSON); raise CatalogError for an
    overlay whose shape the rule cannot apply (its problems name the overlay file). A base of
    the wrong shape is left to the catalog's validation."""
    if not isinstance(overlay, dict):
        raise CatalogError([Problem(overlay_name, "an overlay should be a JSON object")])
    spans: dict[str, tuple[str, str]] = {}
    rest = {k: v for k, v in overlay.items() if k not in ("services", "$schema")}
    data = merge_patch(base, rest) if isinstance(base, dict) else base
    _record(spans, (), rest, overlay_name, ())
    if "services" not in overlay or not isinstance(data, dict):
        return Merged(data, Origins(base_name, spans))
    patches, problems = _service_patches(overlay["services"], overlay_name)
    base_services = data.get("services")
    if not isinstance(base_services, list):
        base_services = []
    merged: list[Any] = []
    seen: set[str] = set()
    for j, item in enumerate(base_services):
        svc = item.get("service_name") if isinstance(item, dict) else None
        found = patches.get(svc) if isinstance(svc, str) else None
        if found is None:
            spans[json_path(("services", len(merged)))] = (base_name, json_path(("services", j)))
            merged.append(item)
            continue
        assert isinstance(svc, str)
        seen.add(svc)
        patch, loc = found
        if patch is None:
            continue  # removed
        at: Loc = ("services", len(merged))
        spans[json_path(at)] = (base_name, json_path(("services", j)))
        _record(spans, at, patch, overlay_name, loc)
        merged.append(merge_patch(item, patch))
    for svc, (patch, loc) in patches.items():
        if svc in seen:
            continue
        if patch is None:
            problems.append(
                Problem(
                    f"{overlay_name}: {json_path(loc)}",
                    f"removes {svc!r}, which {base_name} does not have",
                )
            )
            continue
        at = ("services", len(merged))
        spans[json_path(at)] = (overlay_name, json_path(loc))
        merged.append(merge_patch({"service_name": svc}, patch))
    if problems:
        raise CatalogError(problems)
    return Merged({**data, "services": merged}, Origins(base_name, spans))
