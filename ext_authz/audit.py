"""One JSON line per authorization decision.

Denials are always written; allows are written with probability `allow_sample`. A record never
holds a token, a secret, or a query string (which can carry either).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TextIO


@dataclass(frozen=True)
class AuditRecord:
    time: float
    request_id: str
    trace_id: str | None
    user: str | None
    tenant: str | None
    service: str | None
    method: str
    path: str
    decision: str  # "allow" or "deny"
    status: int
    reason: str
    latency_us: int


@dataclass(frozen=True)
class SuppressedRecord:
    """Denials of one client address that were counted but not written."""

    time: float
    client: str
    suppressed: int


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class AuditLog:
    def __init__(
        self,
        stream: TextIO,
        allow_sample: float = 1.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._stream = stream
        self._allow_sample = allow_sample
        self._rand = rand
        self._lock = threading.Lock()

    def wants(self, allowed: bool) -> bool:
        """Whether to record this decision: every denial, and a sample of the allows."""
        if not allowed or self._allow_sample >= 1:
            return True
        return self._allow_sample > 0 and self._rand() < self._allow_sample

    def write(self, record: AuditRecord) -> None:
        """Write one record (the caller asked `wants` first)."""
        data = asdict(record)
        data["time"] = _iso(record.time)
        data["path"] = record.path.split("?", 1)[0]
        data["audit"] = True
        self._emit(data)

    def write_suppressed(self, record: SuppressedRecord) -> None:
        """One line standing for `record.suppressed` denials that were not written."""
        self._emit(
            {
                "time": _iso(record.time),
                "decision": "suppressed",
                "client": record.client,
                "suppressed": record.suppressed,
                "audit": True,
            }
        )

    def _emit(self, data: dict[str, object]) -> None:
        line = json.dumps(data, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()
