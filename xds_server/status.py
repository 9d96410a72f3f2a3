"""The xDS server's `/status` document, as types. Standard library only: the `sidecar` CLI reads
it with these types too.

`StatusDocument.to_json()` is what the server answers at `/status`; its keys and values are a
contract (operators and scripts read them, `sidecar status --json` prints them). `from_json`
reads a document back and raises `StatusFormatError` naming the JSON path of the first field it
cannot read, so a CLI talking to a server of another version says what it cannot read. Keys it
does not know are ignored (a newer server may add some); the keys older servers did not send
(`protocol`, `refused`, `rejected`, `catalog.watch_error`) take their defaults.

The document, keys in this order:

    version               str | null    the snapshot served now
    fleet_acked_version   str | null    the newest version every connected proxy has ACKed
    versions              {type URL: str}  the served snapshot's version of each type
    catalog               {path, valid, errors: [str], checked_at, and watch_error: str while
                          the file cannot be watched}  the last load of the file
    proxies               [{node_id, node_cluster, protocol, connected_at,
                            peer, user_agent, authenticated (read as "", "", false when absent),
                            types: {short type name: {state, acked_version, current_version,
                                    and nacked_version, error while a NACK stands}}}]
    refused               [{node_id, peer, reason, count, first_at, last_at}]
    rollback_on_nack      bool
    rejected              [{version, node_id, type, error, at, rolled_back_to}]  newest first
    time                  float         when the server wrote the document (Unix time)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class State(StrEnum):
    """A proxy's state for one resource type, ordered by severity: SYNCED < STALE < NACKED.

    SYNCED: it ACKed the version served now. NACKED: it rejected the version served now.
    STALE: anything else (not answered yet, or holding an older version)."""

    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    # Comparisons go by severity, never by the text ("NACKED" < "SYNCED" as strings).
    def __lt__(self, other: str) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return self.severity < other.severity

    def __le__(self, other: str) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return self.severity <= other.severity

    def __gt__(self, other: str) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return self.severity > other.severity

    def __ge__(self, other: str) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return self.severity >= other.severity

    @classmethod
    def worst(cls, states: Iterable[State]) -> State:
        """The most severe of `states`; SYNCED when there are none."""
        return max(states, default=cls.SYNCED)


_SEVERITY: Final = {state: rank for rank, state in enumerate(State)}
_BY_NAME: Final = {state.value: state for state in State}


@dataclass(frozen=True)
class CatalogStatus:
    """The last attempt to load the catalog file."""

    path: str
    valid: bool  # False: the file on disk is not what is served (the last good version is)
    errors: tuple[str, ...]
    checked_at: float
    # Why the catalog is not being watched right now (its directory cannot be watched; edits
    # are then still found by a check of the file every second); None while it is.
    watch_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "valid": self.valid,
            "errors": list(self.errors),
            "checked_at": self.checked_at,
        }
        if self.watch_error is not None:
            out["watch_error"] = self.watch_error
        return out


@dataclass(frozen=True)
class Nacked:
    """The version of a type a proxy rejected last, and Envoy's message; it stands until the
    proxy ACKs another version of that type."""

    version: str
    error: str


@dataclass(frozen=True)
class TypeReport:
    """One proxy's view of one resource type."""

    state: State
    acked_version: str | None
    current_version: str | None  # the version of this type served now
    nacked: Nacked | None = None
    # It may run part of the version it NACKed beside `acked_version` (Envoy applied what
    # passed of it, and what it had could not be put back: `xds_server.restore`).
    partial: bool = False

    @property
    def error(self) -> str | None:
        """Envoy's message while a NACK of this type stands."""
        return self.nacked.error if self.nacked is not None else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state.value,
            "acked_version": self.acked_version,
            "current_version": self.current_version,
        }
        if self.nacked is not None:
            out["nacked_version"] = self.nacked.version
            out["error"] = self.nacked.error
        if self.partial:
            out["partially_applied"] = True
        return out


@dataclass(frozen=True)
class ProxyReport:
    """One connected stream."""

    node_id: str
    node_cluster: str
    protocol: str  # "sotw" or "delta"
    connected_at: float
    types: Mapping[str, TypeReport]  # by short type name ("clusters"), in the order asked
    peer: str = ""  # the client's address, as gRPC names it ("ipv4:127.0.0.1:40000")
    user_agent: str = ""  # the node's user_agent_name ("envoy" for Envoy)
    authenticated: bool = False  # by a client certificate that names the node

    @property
    def state(self) -> State:
        """The worst state among its types (SYNCED when it asked for none yet)."""
        return State.worst(t.state for t in self.types.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "node_cluster": self.node_cluster,
            "protocol": self.protocol,
            "connected_at": self.connected_at,
            "peer": self.peer,
            "user_agent": self.user_agent,
            "authenticated": self.authenticated,
            "types": {short: t.to_json() for short, t in self.types.items()},
        }


@dataclass(frozen=True)
class RefusalReport:
    """Streams refused for one reason from one node: a proxy that cannot get config from us."""

    node_id: str  # "" when the stream never named its node
    peer: str
    reason: str
    count: int
    first_at: float
    last_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "peer": self.peer,
            "reason": self.reason,
            "count": self.count,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


@dataclass(frozen=True)
class RejectionReport:
    """A version Envoy rejected, and whether the fleet was rolled back from it."""

    version: str
    node_id: str
    type: str  # short type name
    error: str
    at: float
    rolled_back_to: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "node_id": self.node_id,
            "type": self.type,
            "error": self.error,
            "at": self.at,
            "rolled_back_to": self.rolled_back_to,
        }


@dataclass(frozen=True)
class StatusDocument:
    """The whole `/status` answer (see the module docstring for its JSON)."""

    version: str | None
    fleet_acked_version: str | None
    versions: Mapping[str, str]  # by type URL
    catalog: CatalogStatus
    proxies: tuple[ProxyReport, ...]
    refused: tuple[RefusalReport, ...]
    rollback_on_nack: bool
    rejected: tuple[RejectionReport, ...]  # newest first
    time: float

    def type_reports(self) -> Iterator[TypeReport]:
        """Every proxy's report of every type."""
        for proxy in self.proxies:
            yield from proxy.types.values()

    @property
    def state(self) -> State:
        """The worst state of any type of any proxy (SYNCED with no proxy)."""
        return State.worst(t.state for t in self.type_reports())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fleet_acked_version": self.fleet_acked_version,
            "versions": dict(self.versions),
            "catalog": self.catalog.to_json(),
            "proxies": [p.to_json() for p in self.proxies],
            "refused": [r.to_json() for r in self.refused],
            "rollback_on_nack": self.rollback_on_nack,
            "rejected": [r.to_json() for r in self.rejected],
            "time": self.time,
        }


class StatusFormatError(ValueError):
    """A status document `from_json` cannot read. `path` is the JSON path of the field
    (`proxies[0].types.clusters.state`; "" for the document itself)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or 'the document'}: {reason}")
        self.path = path
        self.reason = reason


def from_json(document: object) -> StatusDocument:
    """The document `StatusDocument.to_json` wrote (after a JSON round trip); raises
    StatusFormatError naming the first field that is missing or of the wrong type."""
    top = _Fields(document, "")
    return StatusDocument(
        version=top.text_or_none("version"),
        fleet_acked_version=top.text_or_none("fleet_acked_version"),
        versions={key: _text(value, path) for key, value, path in top.members("versions")},
        catalog=_catalog(top.fields("catalog")),
        proxies=tuple(_proxy(_Fields(p, path)) for p, path in top.items("proxies")),
        refused=tuple(_refusal(_Fields(r, path)) for r, path in top.items("refused", [])),
        rollback_on_nack=top.flag("rollback_on_nack"),
        rejected=tuple(_rejection(_Fields(r, path)) for r, path in top.items("rejected", [])),
        time=top.number("time"),
    )


def _catalog(catalog: _Fields) -> CatalogStatus:
    return CatalogStatus(
        path=catalog.text("path"),
        valid=catalog.flag("valid"),
        errors=tuple(_text(e, path) for e, path in catalog.items("errors")),
        checked_at=catalog.number("checked_at"),
        watch_error=catalog.text_or_none("watch_error", None),
    )


def _proxy(proxy: _Fields) -> ProxyReport:
    return ProxyReport(
        node_id=proxy.text("node_id"),
        node_cluster=proxy.text("node_cluster"),
        protocol=proxy.text("protocol", "sotw"),
        connected_at=proxy.number("connected_at"),
        types={short: _type(_Fields(t, path)) for short, t, path in proxy.members("types")},
        peer=proxy.text("peer", ""),
        user_agent=proxy.text("user_agent", ""),
        authenticated=proxy.flag("authenticated", False),
    )


def _type(entry: _Fields) -> TypeReport:
    state = entry.state("state")
    acked_version = entry.text_or_none("acked_version")
    current_version = entry.text_or_none("current_version")
    nacked_version = entry.text_or_none("nacked_version", None)
    nacked = None if nacked_version is None else Nacked(nacked_version, entry.text("error"))
    partial = entry.flag("partially_applied", False)
    return TypeReport(state, acked_version, current_version, nacked, partial)


def _refusal(refused: _Fields) -> RefusalReport:
    return RefusalReport(
        node_id=refused.text("node_id"),
        peer=refused.text("peer"),
        reason=refused.text("reason"),
        count=refused.whole("count"),
        first_at=refused.number("first_at"),
        last_at=refused.number("last_at"),
    )


def _rejection(rejected: _Fields) -> RejectionReport:
    return RejectionReport(
        version=rejected.text("version"),
        node_id=rejected.text("node_id"),
        type=rejected.text("type"),
        error=rejected.text("error"),
        at=rejected.number("at"),
        rolled_back_to=rejected.text_or_none("rolled_back_to"),
    )


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REQUIRED: Final = object()


def _join(path: str, key: str) -> str:
    if _NAME.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _kind(value: object) -> str:
    """The JSON name of `value`'s type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise StatusFormatError(path, f"expected a string, got {_kind(value)}")
    return value


class _Fields:
    """The members of the JSON object at `path`, read by type."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise StatusFormatError(path, f"expected an object, got {_kind(value)}")
        self._members: dict[str, object] = value
        self._path = path

    def _get(self, key: str, default: object) -> tuple[object, str]:
        path = _join(self._path, key)
        if key in self._members:
            return self._members[key], path
        if default is _REQUIRED:
            raise StatusFormatError(path, "missing")
        return default, path

    def text(self, key: str, default: object = _REQUIRED) -> str:
        return _text(*self._get(key, default))

    def text_or_none(self, key: str, default: object = _REQUIRED) -> str | None:
        value, path = self._get(key, default)
        return None if value is None else _text(value, path)

    def flag(self, key: str, default: object = _REQUIRED) -> bool:
        value, path = self._get(key, default)
        if not isinstance(value, bool):
            raise StatusFormatError(path, f"expected true or false, got {_kind(value)}")
        return value

    def number(self, key: str) -> float:
        value, path = self._get(key, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StatusFormatError(path, f"expected a number, got {_kind(value)}")
        return float(value)

    def whole(self, key: str) -> int:
        value, path = self._get(key, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StatusFormatError(path, f"expected a whole number, got {_kind(value)}")
        return value

    def state(self, key: str) -> State:
        text = self.text(key)
        if text not in _BY_NAME:
            names = ", ".join(_BY_NAME)
            raise StatusFormatError(
                _join(self._path, key), f"expected one of {names}, got {text!r}"
            )
        return _BY_NAME[text]

    def fields(self, key: str) -> _Fields:
        return _Fields(*self._get(key, _REQUIRED))

    def items(self, key: str, default: object = _REQUIRED) -> Iterator[tuple[object, str]]:
        """The elements of the array at `key`, each with its path."""
        value, path = self._get(key, default)
        if not isinstance(value, list):
            raise StatusFormatError(path, f"expected an array, got {_kind(value)}")
        return ((item, f"{path}[{i}]") for i, item in enumerate(value))

    def members(self, key: str) -> Iterator[tuple[str, object, str]]:
        """The members of the object at `key`: name, value and path of each."""
        value, path = self._get(key, _REQUIRED)
        if not isinstance(value, dict):
            raise StatusFormatError(path, f"expected an object, got {_kind(value)}")
        return ((str(k), v, _join(path, str(k))) for k, v in value.items())
