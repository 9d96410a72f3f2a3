"""One JSON line per authorization decision.

Denials are always written; allows are written with probability `allow_sample`, each allow
independently of the others. One random draw per written allow, not one per allow: the number
of allows skipped before the next one written is drawn from the geometric distribution (what
`random() < allow_sample` per allow would give). A record never holds a token, a secret, or a
query string (which can carry either).

Lines are buffered, never written on a check's thread or event loop: `start()` runs a writer
thread that writes what accumulated at most every `interval_s` (50 ms), and `close()` writes
the rest. At most `max_buffered` lines wait; beyond that (a stream that cannot keep up) lines
are dropped, counted, and reported by one `{"decision":"dropped","dropped":N}` line.

Denials the caller chose not to write (`suppress`, past the observer's cap) are counted by
service and reason and written as one summary line,
`{"decision":"suppressed","suppressed":N,"counts":[{"service","reason","denials"}…]}`, by the
writer thread at most `summary_after_s` (0.5 s) after the first one it counts, whether or not
anything else happens: every denial is a line or is counted in a summary within a second.
`flush()` and `close()` write a pending summary at once.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TextIO

from sidecar_shared import defaults


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
    decision: str  # "allow", "deny" or "would_deny" (dry run: allowed; `status` it would get)
    status: int
    reason: str
    latency_us: int


@dataclass(frozen=True)
class SuppressedRecord:
    """Denials that were counted but not written; `client` when they are one address's,
    `counts` as (service, reason, denials)."""

    time: float
    client: str | None
    suppressed: int
    counts: tuple[tuple[str, str, int], ...] = ()


# Distinct (service, reason) pairs one summary counts apart; the rest are counted together
# under `OTHER` (reasons are a fixed set of codes, but a direct caller chooses the service).
MAX_SUMMARY_KEYS = 256
OTHER = "(other)"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class AuditLog:
    def __init__(
        self,
        stream: TextIO,
        allow_sample: float = 1.0,
        rand: Callable[[], float] = random.random,
        max_buffered: int = 100_000,
        summary_after_s: float = defaults.AUDIT_SUMMARY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
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
        self._summary_after_s = summary_after_s
        self._clock = clock
        # Denials counted, not written, since the last summary: (service, reason) -> count,
        # and when (`clock`) the first of them was counted.
        self._suppressed: dict[tuple[str, str], int] = {}
        self._suppressed_since = 0.0
        self._skip = self._gap()  # allows to skip before the next one written

    def start(self, interval_s: float = 0.05) -> None:
        """Write buffered lines from a thread, at most every `interval_s`."""

        def run() -> None:
            while not self._stopping.is_set():
                self._wake.wait(self._until_summary())
                self._wake.clear()
                self._flush(summary_due=self._clock())
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
        """Write the buffered lines, and the summary of suppressed denials, now."""
        self._flush(summary_due=None)

    def _until_summary(self) -> float | None:
        """Seconds until the pending summary is due; None when there is none."""
        with self._lock:
            if not self._suppressed:
                return None
            since = self._suppressed_since
        return max(0.0, since + self._summary_after_s - self._clock())

    def _flush(self, summary_due: float | None) -> None:
        """Write the buffered lines, and the summary when it is due at `summary_due` (a `clock`
        reading; None: whenever one is pending)."""
        with self._lock:
            lines, self._lines = self._lines, []
            dropped, self._dropped = self._dropped, 0
            counts: dict[tuple[str, str], int] = {}
            if self._suppressed and (
                summary_due is None or summary_due >= self._suppressed_since + self._summary_after_s
            ):
                counts, self._suppressed = self._suppressed, {}
        if counts:
            summary = SuppressedRecord(
                time.time(),
                None,
                sum(counts.values()),
                tuple((service, reason, n) for (service, reason), n in counts.items()),
            )
            lines.append(_line(_suppressed_data(summary)))
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
        if self._skip > 0:  # unlocked: a lost decrement between threads shifts one draw
            self._skip -= 1
            return False
        if self._allow_sample <= 0:
            return False
        self._skip = self._gap()
        return True

    def _gap(self) -> int:
        """Allows to skip before the next one written: geometric, P(k) = (1 - p)^k p."""
        p = self._allow_sample
        if p >= 1:
            return 0
        if p <= 0:
            return 1 << 62
        return int(math.log(1.0 - self._rand()) / math.log1p(-p))

    def write(self, record: AuditRecord) -> None:
        """Write one record (the caller asked `wants` first)."""
        data = asdict(record)
        data["time"] = _iso(record.time)
        data["path"] = record.path.split("?", 1)[0]
        data["audit"] = True
        self._emit(data)

    def write_suppressed(self, record: SuppressedRecord) -> None:
        """One line standing for `record.suppressed` denials that were not written."""
        self._emit(_suppressed_data(record))

    def suppress(self, service: str | None, reason: str) -> None:
        """Count one denial that is not written; the writer thread writes the count in a
        summary line at most `summary_after_s` after the first one counted."""
        key = (service or "", reason)
        with self._lock:
            first = not self._suppressed
            if first:
                self._suppressed_since = self._clock()
            if key not in self._suppressed and len(self._suppressed) >= MAX_SUMMARY_KEYS:
                key = (OTHER, OTHER)
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
        if first:
            self._wake.set()

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


def _suppressed_data(record: SuppressedRecord) -> dict[str, object]:
    data: dict[str, object] = {"time": _iso(record.time), "decision": "suppressed"}
    if record.client is not None:
        data["client"] = record.client
    data["suppressed"] = record.suppressed
    if record.counts:
        data["counts"] = [
            {"service": service, "reason": reason, "denials": n}
            for service, reason, n in record.counts
        ]
    data["audit"] = True
    return data


def _line(data: dict[str, object]) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"
