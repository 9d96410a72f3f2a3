"""The policy file: route policies for an Envoy that our xDS server does not configure
(`--policy-file`, `SIDECAR_POLICY_FILE`; docs/standalone.md). Standard library and the contract
only, so ext_authz never reads the catalog itself: `sidecar policy --catalog C --write F`
compiles one from a catalog with the xDS server's own compiler.

Format, version 1 (JSON):

    {"sidecar_policy_file": 1,
     "routes": [{"service": "orders", "match": "prefix", "path": "/orders",
                 "methods": ["GET"],                      # optional: any method when absent
                 "policy": {"v": 1, "service": "orders", ...}}]}   # `contract.encode`'s JSON

`match` is `prefix` (the path and everything below it, at a `/` boundary: `/orders` matches
`/orders`, `/orders/7`, not `/ordersx`), `exact`, or `template` (`/orders/{id}/export`: each
`{name}` one non-empty segment). A check whose route carries no policy of its own is decided
by the first route of the file, in order, that matches its method and path (the query string
left out); when the check names a service (gRPC `context_extensions` key `service`, set in
the Envoy route's config and never by a client), only that service's routes are tried. None
matches: 403 `no_policy`, as without a file. The file is read once, at start: restart
ext_authz to change it. It is trusted as the key files are (whoever writes it decides every
request), so it carries no MAC. A policy that a check does carry (a signed one, from our xDS
server or `sidecar policy --signed`) is verified and used as before, and a forged one is
refused: it never falls back to the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from sidecar_shared.contract import (
    ACTION_OF_METHOD,
    SERVICE_KEY,
    PolicyError,
    RoutePolicy,
    decode,
)

FORMAT_KEY: Final = "sidecar_policy_file"
FORMAT_VERSION: Final = 1
Match = Literal["prefix", "exact", "template"]
_MATCHES: Final = ("prefix", "exact", "template")
_VARIABLE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_ROUTE_FIELDS: Final = frozenset({"service", "match", "path", "methods", "policy"})


class PolicyFileError(ValueError):
    """The policy file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class FileRoute:
    service: str
    match: Match
    path: str
    methods: frozenset[str] | None  # None: every method
    policy: RoutePolicy

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.match == "exact":
            return path == self.path
        if self.match == "prefix":
            base = self.path.rstrip("/")
            return not base or path == base or path.startswith(base + "/")
        want = self.path.split("/")
        have = path.split("/")
        return len(want) == len(have) and all(
            w == h or (_VARIABLE.fullmatch(w) is not None and h != "")
            for w, h in zip(want, have, strict=True)
        )


class PolicyTable:
    """The routes of a policy file, in order; `find` is the lookup of a check without a
    policy of its own."""

    def __init__(self, routes: Sequence[FileRoute], source: str = "") -> None:
        self.routes = tuple(routes)
        self.source = source
        self._services = frozenset(r.service for r in routes)

    def find(self, context: Mapping[str, str], method: str, path: str) -> RoutePolicy:
        """The policy of the first route matching; raises PolicyError saying why none did."""
        path = path.partition("?")[0] or "/"
        service = context.get(SERVICE_KEY)
        if service is not None and service not in self._services:
            raise PolicyError(
                f"the route names service {service!r}, which the policy file "
                f"{self.source} does not have"
            )
        for route in self.routes:
            if (service is None or route.service == service) and route.matches(method, path):
                return route.policy
        raise PolicyError(
            f"no route of the policy file {self.source} matches {method} {path[:200]!r}"
            + (f" of service {service!r}" if service is not None else "")
        )


def parse(data: object, source: str = "") -> PolicyTable:
    """A policy file's decoded JSON → its table; raises PolicyFileError with the JSON path of
    the first problem."""
    if not isinstance(data, dict):
        raise PolicyFileError(f"{source}: a policy file is a JSON object")
    version = data.get(FORMAT_KEY)
    if version != FORMAT_VERSION:
        raise PolicyFileError(
            f"{source}: {FORMAT_KEY} must be {FORMAT_VERSION} (the format this ext_authz "
            f"reads), not {version!r}"
        )
    unknown = sorted(set(data) - {FORMAT_KEY, "routes"})
    if unknown:
        raise PolicyFileError(f"{source}: unknown field(s) {', '.join(unknown)}")
    routes = data.get("routes")
    if not isinstance(routes, list) or not routes:
        raise PolicyFileError(f"{source}: routes must be a non-empty list")
    return PolicyTable(
        [_route(item, f"{source}: routes[{i}]") for i, item in enumerate(routes)], source
    )


def _route(item: Any, where: str) -> FileRoute:
    if not isinstance(item, dict):
        raise PolicyFileError(f"{where}: must be an object")
    unknown = sorted(set(item) - _ROUTE_FIELDS)
    if unknown:
        raise PolicyFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    service, match, path = item.get("service"), item.get("match", "prefix"), item.get("path")
    if not isinstance(service, str) or not service:
        raise PolicyFileError(f"{where}.service: must be a non-empty string")
    if match not in _MATCHES:
        raise PolicyFileError(f"{where}.match: must be prefix, exact or template")
    if not isinstance(path, str) or not path.startswith("/") or "?" in path:
        raise PolicyFileError(f"{where}.path: must be a URL path starting with '/'")
    if match != "template" and _VARIABLE.search(path):
        raise PolicyFileError(f"{where}.path: '{{…}}' segments need match: template")
    methods = item.get("methods")
    if methods is not None and (
        not isinstance(methods, list)
        or not methods
        or any(m not in ACTION_OF_METHOD for m in methods)
    ):
        raise PolicyFileError(f"{where}.methods: a non-empty list of {', '.join(ACTION_OF_METHOD)}")
    try:
        policy = decode(json.dumps(item.get("policy")))
    except PolicyError as err:
        raise PolicyFileError(f"{where}.policy: {err}") from None
    if policy.service != service:
        raise PolicyFileError(f"{where}.policy: names service {policy.service!r}, not {service!r}")
    return FileRoute(service, match, path, frozenset(methods) if methods else None, policy)


def load(path: Path) -> PolicyTable:
    """Read and parse a policy file; raises PolicyFileError (the file unreadable included)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyFileError(f"{path}: cannot read the policy file: {err}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise PolicyFileError(f"{path}: not JSON: {err.msg} at line {err.lineno}") from None
    return parse(data, str(path))


def document(routes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A policy file holding `routes` (each with the fields above)."""
    return {FORMAT_KEY: FORMAT_VERSION, "routes": list(routes)}
