"""JSON log lines: one object per record, with the record's `extra={"fields": {...}}` merged in.

A library's own logger (the OpenTelemetry exporter's) is routed here with `route_library_logs`:
one JSON line per record, the exception as one `type: message` field instead of a traceback,
and at most one line per message per interval (`RateLimit`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    """`tracebacks=False` writes an exception as `type: message`, for libraries whose failures
    are expected operating conditions (a collector that is down), not bugs of ours."""

    def __init__(self, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and self.tracebacks:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exception"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return json.dumps(out, default=str, separators=(",", ":"))


def make_logger(name: str, level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    """A logger that writes JSON lines to `stream` (stderr by default) and nowhere else."""
    log = logging.getLogger(name)
    log.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log


class RateLimit(logging.Filter):
    """Passes the first record of each message (its logger and unformatted text, so every
    "failed to export to %s" is one message) and then none of that message for `interval_s`;
    the next one passed carries `suppressed`: how many were dropped meanwhile."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        if len(self._last) >= 1000:  # bounded: a library with unbounded message texts
            self._last.clear()
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            fields = getattr(record, "fields", None)
            record.fields = {**(fields if isinstance(fields, dict) else {}), "suppressed": dropped}
        return True


def route_library_logs(
    name: str, stream: TextIO | None = None, interval_s: float = 60.0, level: str = "warning"
) -> logging.Logger:
    """Send the library logger `name` (and its children) to `stream` as rate-limited one-line
    JSON records, instead of Python's last-resort handler (plain text, tracebacks)."""
    log = logging.getLogger(name)
    log.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(tracebacks=False))
    handler.addFilter(RateLimit(interval_s))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log
