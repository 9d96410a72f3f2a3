"""One JSON line per authorization decision.

Denials are always written; allows are written with probability `allow_sample`. A record never
holds a token, a secret, or a query string (which can carry either).

Lines are buffered, never written on a check's thread or event loop: `start()` runs a writer
thread that writes what accumulated at most every `interval_s` (50 ms), and `close()` writes
the rest. At most `max_buffered` lines wait; beyond that (a stream that cannot keep up) lines
are dropped, counted, and reported by one `{"decision":"dropped","dropped":N}` line.
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
        max_buffered: int = 100_000,
    ) -> None:
        self._stream = stream
        self._allow_sample = allow_sample
        self._rand = rand
        self._max_buffered = max_buffered
        self._lines: list[str] = []
        self._dropped = 0
        self._lock = threading.Lock()  # the buffer
        self._write_lock = threading.Lock()  # the stream
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float = 0.05) -> None:
        """Write buffered lines from a thread, at most every `interval_s`."""

        def run() -> None:
            while not self._stopping.is_set():
                self._wake.wait()
                self._wake.clear()
                self.flush()
                self._stopping.wait(interval_s)
            self.flush()

        self._thread = threading.Thread(target=run, name="audit-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the writer (if started) and write every buffered line."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def flush(self) -> None:
        """Write the buffered lines now."""
        with self._lock:
            lines, self._lines = self._lines, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            lines.append(
                _line(
                    {
                        "time": _iso(time.time()),
                        "decision": "dropped",
                        "dropped": dropped,
                        "audit": True,
                    }
                )
            )
        if not lines:
            return
        with self._write_lock:
            self._stream.write("".join(lines))
            self._stream.flush()

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
        line = _line(data)
        with self._lock:
            if len(self._lines) >= self._max_buffered:
                self._dropped += 1
                return
            self._lines.append(line)
            first = len(self._lines) == 1
        if first:
            self._wake.set()


def _line(data: dict[str, object]) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"
