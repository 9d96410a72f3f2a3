"""What the xDS server keeps on disk so that Envoy's verdicts outlive it: the snapshots proxies
accepted and the versions they rejected (`--state-dir`, `SIDECAR_STATE_DIR`).

Why on disk, and why these. A restarted server (or a crash restart under `sidecar up`, or
another replica) reads the same catalog file; were a rejection only in memory, it would serve
the rejected version again. What the proxies report does not suffice alone: a reconnecting
Envoy says which version it runs (`version_info`, `initial_resource_versions`) but not what
that version holds, so without its content a server cannot put back what Envoy applied of a
version it rejects again (`restore`). So the directory holds both, and every replica that is
given the same directory (a shared volume) sees what the others recorded:

    accepted/<snapshot version>.snap   a snapshot some proxy ACKed whole (every type), as the
                                       bytes Envoy was sent; the `HISTORY` newest are kept
    rejected/<snapshot version>.json   a version rejected by a proxy that may veto (`fleet`)

A snapshot is stored as Envoy received it, not as the catalog it came from: it is what the
proxies run whatever flags built it, and its version (a content hash) is checked when it is
read back, so a truncated or edited file is ignored (and logged), never served. Files are
written to a temporary name and renamed, so a reader never sees half of one; two replicas
writing the same version write the same bytes. The directory is created when missing. Errors
of the disk are logged and cost only the persistence: serving goes on.

Default: `$XDG_STATE_HOME/sidecar/xds-<hash of the catalog's absolute path>` (`XDG_STATE_HOME`
defaults to `~/.local/state`): a directory the user owns, away from the catalog (often a
read-only ConfigMap), shared by the servers of one host that read the same catalog, and
distinct for another catalog. An empty value keeps nothing (rejections then last as long as
the process; a restarted server re-serving a rejected version is NACKed again and each proxy
is put back to what it had, when this server kept it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from xds_server import typeurls
from xds_server.snapshot import Resource, Snapshot
from xds_server.wire import _varint

ACCEPTED = "accepted"
REJECTED = "rejected"
KEEP = 8  # snapshots kept (as `fleet.HISTORY`)
KEEP_REJECTED = 64  # rejections kept


def default_path(catalog: Path, environ: Mapping[str, str]) -> Path:
    """The default state directory for `catalog` (see above)."""
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    key = hashlib.sha256(str(catalog.absolute()).encode()).hexdigest()[:12]
    return Path(base).expanduser() / "sidecar" / f"xds-{key}"


def encode(snapshot: Snapshot) -> bytes:
    """A snapshot's resources as bytes: per type, a length-prefixed DeltaDiscoveryResponse."""
    out = []
    for type_url in typeurls.PUSH_ORDER:
        body = discovery_pb2.DeltaDiscoveryResponse(
            type_url=type_url,
            system_version_info=snapshot.versions.get(type_url, ""),
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.version, resource=r.packed)
                for r in snapshot.resources.get(type_url, {}).values()
            ],
        ).SerializeToString()
        out.append(_varint(len(body)) + body)
    return b"".join(out)


def decode(data: bytes) -> Snapshot:
    """`encode`'s inverse; raises ValueError when the bytes are not one."""
    by_type: dict[str, list[Resource]] = {}
    at = 0
    while at < len(data):
        size, shift = 0, 0
        while True:
            if at >= len(data):
                raise ValueError("truncated")
            byte = data[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if at + size > len(data):
            raise ValueError("truncated")
        try:
            resp = discovery_pb2.DeltaDiscoveryResponse.FromString(data[at : at + size])
        except DecodeError as err:
            raise ValueError(str(err)) from err
        at += size
        if resp.type_url not in typeurls.MESSAGES:
            raise ValueError(f"unknown type {resp.type_url!r}")
        by_type[resp.type_url] = [
            Resource.of(r.name, typeurls.MESSAGES[resp.type_url].FromString(r.resource.value))
            for r in resp.resources
        ]
    return Snapshot.of(by_type)


@dataclass(frozen=True)
class RejectionRecord:
    """A rejection as kept on disk (`fleet.Rejection`'s fields)."""

    version: str
    node_id: str
    type_url: str
    error: str
    at: float
    rollback: bool
    rolled_back_to: str | None
    refusal: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any) -> RejectionRecord:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            return cls(
                str(data["version"]),
                str(data["node_id"]),
                str(data["type_url"]),
                str(data["error"]),
                float(data["at"]),
                bool(data["rollback"]),
                None if data.get("rolled_back_to") is None else str(data["rolled_back_to"]),
                str(data["refusal"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad rejection record: {err}") from err


def _safe(version: str) -> bool:
    """Versions are hex digests: anything else is not a file name of ours."""
    return bool(version) and all(c in "0123456789abcdef" for c in version)


class StateDir:
    """The state directory at `path`; every method logs what fails and carries on."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = path
        self._log = log

    def _problem(self, what: str, err: Exception) -> None:
        self._log.warning(
            f"state directory: {what}",
            extra={"fields": {"path": str(self.path), "error": str(err)}},
        )

    def _write(self, target: Path, data: bytes) -> None:
        # What Envoy is sent (addresses, signed policies): for the server's user only.
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.parent.mkdir(exist_ok=True, mode=0o700)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    @staticmethod
    def _by_age(directory: Path, suffix: str) -> list[Path]:
        """The files of `directory` ending in `suffix`, oldest first."""
        if not directory.is_dir():
            return []
        found = []
        for p in directory.iterdir():
            if p.name.endswith(suffix) and not p.name.startswith("."):
                try:
                    found.append((p.stat().st_mtime_ns, p.name, p))
                except OSError:
                    continue
        return [p for _, _, p in sorted(found)]

    def _prune(self, directory: Path, suffix: str, keep: int) -> None:
        for old in self._by_age(directory, suffix)[:-keep]:
            old.unlink(missing_ok=True)

    def accepted(self, snapshot: Snapshot) -> None:
        """Keep `snapshot`, accepted whole by a proxy (the newest of the kept from now)."""
        target = self.path / ACCEPTED / f"{snapshot.version}.snap"
        try:
            if target.exists():
                os.utime(target)  # accepted again: the newest
            else:
                self._write(target, encode(snapshot))
            self._prune(target.parent, ".snap", KEEP)
        except OSError as err:
            self._problem("cannot keep an accepted version", err)

    def accepted_soon(self, snapshot: Snapshot) -> None:
        """`accepted`, on a worker thread when called on an event loop (a snapshot of 10,000
        services is about 19 MB and 250 ms to write: the streams do not wait for it; the
        loop's executor is joined when the server stops)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.accepted(snapshot)
            return
        loop.run_in_executor(None, self.accepted, snapshot)

    def accepted_snapshots(self, skip: frozenset[str] = frozenset()) -> list[Snapshot]:
        """The accepted snapshots kept, oldest first, but those whose versions are in `skip`;
        a file that does not hold the version its name says is ignored (and logged)."""
        out = []
        try:
            files = self._by_age(self.path / ACCEPTED, ".snap")
        except OSError as err:
            self._problem("cannot list the accepted versions", err)
            return []
        for file in files:
            version = file.name.removesuffix(".snap")
            if version in skip:
                continue
            try:
                snapshot = decode(file.read_bytes())
            except (OSError, ValueError) as err:
                self._problem(f"cannot read {file.name}", err)
                continue
            if snapshot.version != version:
                self._problem(
                    f"{file.name} does not hold its version", ValueError(snapshot.version)
                )
                continue
            out.append(snapshot)
        return out

    def rejected(self, record: RejectionRecord) -> None:
        if not _safe(record.version):
            return
        target = self.path / REJECTED / f"{record.version}.json"
        try:
            self._write(target, json.dumps(record.to_json()).encode())
            self._prune(target.parent, ".json", KEEP_REJECTED)
        except OSError as err:
            self._problem("cannot keep a rejection", err)

    def rejection(self, version: str) -> RejectionRecord | None:
        """The rejection of `version` kept (by this server or another), or None."""
        if not _safe(version):
            return None
        file = self.path / REJECTED / f"{version}.json"
        try:
            return RejectionRecord.from_json(json.loads(file.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            self._problem(f"cannot read {file.name}", err)
            return None

    def rejections(self) -> list[RejectionRecord]:
        """The rejections kept, oldest first."""
        out = []
        try:
            files = self._by_age(self.path / REJECTED, ".json")
        except OSError as err:
            self._problem("cannot list the rejections", err)
            return []
        for file in files:
            found = self.rejection(file.name.removesuffix(".json"))
            if found is not None:
                out.append(found)
        return out
