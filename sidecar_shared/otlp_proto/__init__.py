"""opentelemetry-proto's own modules for the OTLP exporters, whichever copy pip left on disk.

`xds-protos` (every release from 1.58 to 1.85 at least) ships copies of eight of
`opentelemetry-proto`'s modules at the same paths (`opentelemetry/proto/...`), generated from the
OTLP protos of 2021 (no `InstrumentationScope`). Whichever wheel pip unpacks last wins; when it
is xds-protos, the OTLP exporters cannot import. No pin avoids it (no xds-protos release ships
current copies) and install order is not a contract (pip's is an implementation detail, other
installers unpack in parallel), so the fix is here, at import time:

`install()` checks each of the eight files on disk against the hash opentelemetry-proto's own
RECORD gives it. If any is not the file opentelemetry-proto installed, a finder first on
`sys.meta_path` serves the eight modules from this package instead: unchanged copies of
opentelemetry-proto 1.45.2's files (Apache License 2.0), the version constraints.txt pins (a test
checks they match its RECORD). Nothing on disk is changed. Envoy's messages that import these
modules (its OpenTelemetry access logger and stats sink, which we do not configure) only use
messages both copies define.

Contract: call `install()` before anything imports `opentelemetry.proto` (sidecar_shared.tracing
does, before it imports an exporter). Do not import this package's `*_pb2` modules by their own
names: they register the descriptors of opentelemetry-proto's files.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path
from types import ModuleType

VENDORED_VERSION = "1.45.2"
HERE = Path(__file__).resolve().parent

# The modules xds-protos overwrites with different content → this package's file of each.
MODULES: Mapping[str, str] = {
    "opentelemetry.proto.collector.logs.v1.logs_service_pb2": "logs_service_pb2.py",
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2": "metrics_service_pb2.py",
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2": "trace_service_pb2.py",
    "opentelemetry.proto.common.v1.common_pb2": "common_pb2.py",
    "opentelemetry.proto.logs.v1.logs_pb2": "logs_pb2.py",
    "opentelemetry.proto.metrics.v1.metrics_pb2": "metrics_pb2.py",
    "opentelemetry.proto.resource.v1.resource_pb2": "resource_pb2.py",
    "opentelemetry.proto.trace.v1.trace_pb2": "trace_pb2.py",
}


def record_path(module: str) -> str:
    """The file's path as a wheel's RECORD names it."""
    return module.replace(".", "/") + ".py"


def file_hash(data: bytes) -> str:
    """RECORD's form: `sha256=` and the urlsafe base64 digest without padding."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def overwritten(dist: Distribution | None = None) -> list[str]:
    """The modules of MODULES whose file on disk is not the one opentelemetry-proto (`dist`,
    by default the installed one) installed; empty when it is not installed (then the exporter
    is not either)."""
    if dist is None:
        try:
            dist = distribution("opentelemetry-proto")
        except PackageNotFoundError:
            return []
    recorded = {str(f): f for f in dist.files or []}
    out = []
    for module in MODULES:
        entry = recorded.get(record_path(module))
        if entry is None or entry.hash is None:
            out.append(module)
            continue
        path = Path(str(dist.locate_file(entry)))
        try:
            intact = file_hash(path.read_bytes()) == f"{entry.hash.mode}={entry.hash.value}"
        except OSError:
            intact = False
        if not intact:
            out.append(module)
    return out


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        name = MODULES.get(fullname)
        if name is None:
            return None
        return importlib.util.spec_from_file_location(fullname, HERE / name)


def installed() -> bool:
    return any(isinstance(f, _Finder) for f in sys.meta_path)


def install() -> bool:
    """Serve this package's copies when pip left xds-protos' on disk; True when it did so.
    Idempotent. Modules already imported stay as they are."""
    if installed():
        return True
    if not overwritten():
        return False
    sys.meta_path.insert(0, _Finder())
    return True
