"""Where a token keeps the identity: paths into nested claims, several role sources, scope
strings, and one warning per configured path that no token has carried.

Path syntax (`SIDECAR_CLAIM_USER`, `SIDECAR_CLAIM_ROLES`, `SIDECAR_CLAIM_TENANT`):

- `name`: a top-level claim.
- `a.b.c`: a claim nested in objects (`realm_access.roles`, `resource_access.my-app.roles`).
- `["a.b"]`: one claim name written as a JSON string in brackets, for names holding dots,
  brackets, commas or spaces; it mixes with dots: `resource_access["my.app"].roles`.
- A path that starts with `http://` or `https://` is one claim name up to the next comma
  (Auth0's namespaced claims: `https://example.com/roles`).
- Several paths are separated by commas. Roles: every path is read and the roles are combined
  in order, duplicates dropped. User and tenant: the first path present in the token wins.

Values: a role source holds a list of strings, or one string that is split at whitespace (OAuth
`scope`: `"read:orders write:orders"`). User and tenant are non-empty strings. A JSON `null`
user or tenant is the same as an absent claim; a `null` at a configured roles path means "no
roles": the roles claim is there, so the legacy `role` claim is not read.

Warnings: the first verified token that lacks a configured path which no earlier token had is
logged once per path, with the names (never the values) of the claims the token does have.
After every path has been either seen or warned about, extraction does no bookkeeping at all.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ClaimError",
    "ClaimExtractor",
    "ClaimMapping",
    "ClaimPath",
    "lookup",
    "parse_paths",
    "set_claim",
]

MISSING: Final = object()
_NAME_END = frozenset('.,[]" \t')
_URL_PREFIXES = ("http://", "https://")
_MAX_NAMES_LOGGED = 50


class ClaimError(Exception):
    """The token's claims do not hold a usable identity. `reason` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ClaimPath:
    text: str  # as the operator wrote it
    keys: tuple[str, ...]


def parse_paths(spec: str, setting: str) -> tuple[ClaimPath, ...]:
    """The comma-separated paths in `spec`; raises ValueError naming `setting` and the position
    of the mistake."""
    paths: list[ClaimPath] = []
    i, n = 0, len(spec)
    while True:
        i = _skip_blanks(spec, i)
        start = i
        if spec.startswith(_URL_PREFIXES, i):
            end = spec.find(",", i)
            i = n if end < 0 else end
            keys: tuple[str, ...] = (spec[start:i].rstrip(),)
        else:
            keys, i = _dotted(spec, i, setting)
        paths.append(ClaimPath(spec[start:i].rstrip(), keys))
        i = _skip_blanks(spec, i)
        if i == n:
            return tuple(paths)
        if spec[i] != ",":
            raise ValueError(f"{setting}: unexpected {spec[i]!r} at position {i + 1} in {spec!r}")
        i += 1


def _skip_blanks(spec: str, i: int) -> int:
    while i < len(spec) and spec[i] in " \t":
        i += 1
    return i


def _dotted(spec: str, i: int, setting: str) -> tuple[tuple[str, ...], int]:
    keys: list[str] = []
    n = len(spec)
    while True:
        if i < n and spec[i] == "[":
            key, i = _bracketed(spec, i, setting)
        else:
            j = i
            while j < n and spec[j] not in _NAME_END:
                j += 1
            if j == i:
                raise ValueError(
                    f"{setting}: a claim name is missing at position {i + 1} in {spec!r}"
                )
            key, i = spec[i:j], j
        keys.append(key)
        if i < n and spec[i] == ".":
            i += 1
        elif i >= n or spec[i] != "[":
            return tuple(keys), i


def _bracketed(spec: str, i: int, setting: str) -> tuple[str, int]:
    """`["name"]` at `spec[i]`: the name and the position after the closing bracket."""
    where = f"{setting}: at position {i + 1} in {spec!r}"
    try:
        key, end = json.JSONDecoder().raw_decode(spec, i + 1)
    except ValueError:
        raise ValueError(f'{where}: write a bracketed name as ["name"]') from None
    if not isinstance(key, str) or not key:
        raise ValueError(f'{where}: write a bracketed name as ["name"]')
    if end >= len(spec) or spec[end] != "]":
        raise ValueError(f"{where}: the bracket is not closed")
    return key, end + 1


def lookup(claims: Mapping[str, Any], keys: Sequence[str], null: Any = MISSING) -> Any:
    """The value at `keys`, or `MISSING` when it is absent; `null` for a JSON null there."""
    node: Any = claims
    for key in keys:
        if not isinstance(node, Mapping):
            return MISSING
        node = node.get(key, MISSING)
        if node is MISSING:
            return MISSING
    return null if node is None else node


def set_claim(payload: MutableMapping[str, Any], spec: str, value: Any) -> None:
    """Put `value` at the first path of `spec`, creating the objects on the way (for minting
    tokens of a given shape)."""
    keys = parse_paths(spec, "claim")[0].keys
    node = payload
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, MutableMapping):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


@dataclass(frozen=True)
class ClaimMapping:
    """Which paths hold the user, the roles and the tenant (parsed once at start)."""

    user: tuple[ClaimPath, ...]
    roles: tuple[ClaimPath, ...]
    tenant: tuple[ClaimPath, ...]
    # One more claim read only when no `roles` path is in the token (the built-in `role`, whose
    # string is one role).
    role_fallback: ClaimPath | None = None

    @classmethod
    def parse(
        cls, *, user: str, roles: str, tenant: str, role_fallback: str | None = None
    ) -> ClaimMapping:
        """Raises ValueError naming the setting that is wrong. An empty `roles` or `tenant`
        reads no such claim."""
        return cls(
            user=parse_paths(user, "SIDECAR_CLAIM_USER"),
            roles=parse_paths(roles, "SIDECAR_CLAIM_ROLES") if roles else (),
            tenant=parse_paths(tenant, "SIDECAR_CLAIM_TENANT") if tenant else (),
            role_fallback=(
                None if role_fallback is None else ClaimPath(role_fallback, (role_fallback,))
            ),
        )


def _text(paths: tuple[ClaimPath, ...]) -> str:
    return ",".join(p.text for p in paths)


def _roles_of(value: Any, path: ClaimPath) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(r, str) for r in value):
        return [r for r in value if r]
    raise ClaimError("malformed", f"the '{path.text}' claim is not a list of strings")


class ClaimExtractor:
    """Reads (user, roles, tenant) from verified claims. Thread-safe."""

    def __init__(self, mapping: ClaimMapping, log: logging.Logger) -> None:
        self._mapping = mapping
        self._log = log
        self._lock = threading.Lock()
        # Paths no token has carried yet and not yet warned about, with their setting.
        self._pending: dict[ClaimPath, str] = {}
        for setting, paths in (
            ("SIDECAR_CLAIM_USER", mapping.user),
            ("SIDECAR_CLAIM_ROLES", mapping.roles),
            ("SIDECAR_CLAIM_TENANT", mapping.tenant),
        ):
            for path in paths:
                self._pending.setdefault(path, setting)

    def extract(self, claims: Mapping[str, Any]) -> tuple[str, tuple[str, ...], str | None]:
        """Raises ClaimError when the user is missing or a value has the wrong type."""
        m = self._mapping
        user = self._first(claims, m.user)
        if not isinstance(user, str) or not user:
            raise ClaimError("missing_claim", f"the token has no '{_text(m.user)}' claim")
        roles: list[str] = []
        found_roles = False
        for path in m.roles:
            value = lookup(claims, path.keys, null=None)
            if value is not MISSING:
                found_roles = True  # a null is a roles claim with no roles: never the fallback
                if value is not None:
                    roles.extend(_roles_of(value, path))
        if not found_roles and m.role_fallback is not None:
            value = lookup(claims, m.role_fallback.keys)
            if value is not MISSING:  # one role by name: a string is not split
                found_roles = True
                roles.extend(
                    [value] if isinstance(value, str) else _roles_of(value, m.role_fallback)
                )
        tenant = self._first(claims, m.tenant)
        if tenant is MISSING:
            tenant = None
        elif not isinstance(tenant, str) or not tenant:
            raise ClaimError("malformed", f"the '{_text(m.tenant)}' claim is not a string")
        if self._pending:
            self._note(claims, skip_roles=found_roles and m.role_fallback is not None)
        return user, tuple(dict.fromkeys(roles)), tenant

    @staticmethod
    def _first(claims: Mapping[str, Any], paths: tuple[ClaimPath, ...]) -> Any:
        for path in paths:
            value = lookup(claims, path.keys)
            if value is not MISSING:
                return value
        return MISSING

    def _note(self, claims: Mapping[str, Any], *, skip_roles: bool) -> None:
        """Forget the paths this token has; warn (once) about the ones it lacks."""
        absent: list[tuple[ClaimPath, str]] = []
        with self._lock:
            for path, setting in list(self._pending.items()):
                if lookup(claims, path.keys) is not MISSING:
                    del self._pending[path]
                elif not (skip_roles and setting == "SIDECAR_CLAIM_ROLES"):
                    del self._pending[path]
                    absent.append((path, setting))
        for path, setting in absent:
            self._log.warning(
                "a configured claim path has not been in any verified token so far",
                extra={"fields": {"setting": setting, "path": path.text, **_names(claims, path)}},
            )


def _names(claims: Mapping[str, Any], path: ClaimPath) -> dict[str, Any]:
    """The claim names the token has (never values): at the top, and inside the deepest object
    of `path` it does have."""
    out: dict[str, Any] = {"claims_present": _capped(claims)}
    node: Any = claims
    reached: list[str] = []
    for key in path.keys[:-1]:
        child = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(child, Mapping):
            break
        node = child
        reached.append(key)
    if reached:
        out["deepest_object"] = ".".join(reached)
        out["names_there"] = _capped(node)
    return out


def _capped(obj: Mapping[str, Any]) -> list[str]:
    return sorted(str(k)[:64] for k in obj)[:_MAX_NAMES_LOGGED]
