"""Envoy's health-check event log: what we configure, how its lines read as transitions, and a
bounded reader of its tail.

Every cluster with an active health check gets Envoy's file event sink
(`envoy.health_check.event_sinks.file`, `HealthCheckEventFileSink`; the health check's own
`event_log_path` is deprecated) when `--health-event-log` names a file
(`resources.clusters.add_event_log`). Envoy 1.40 appends one
JSON object per line, for example (checked by running it):

    {"health_checker_type":"HTTP","host":{"socket_address":{"address":"127.0.0.1",
     "port_value":38003,...}},"cluster_name":"orders","eject_unhealthy_event":{"failure_type":
     "ACTIVE","http_status_code":503},"timestamp":"2026-12-06T06:13:54.298Z",...}

The events that change an endpoint's health are transitions (`parse_line`):
- `add_healthy_event` (`first_check`: true when the host had never been checked) → healthy;
- `eject_unhealthy_event` (`failure_type` ACTIVE, PASSIVE, NETWORK or NETWORK_TIMEOUT, and the
  HTTP status when there was one) → unhealthy;
- `degraded_healthy_host` → degraded, `no_longer_degraded_host` → healthy.
`health_check_failure_event` (a failed check that did not, or not yet, change anything) is not.

Envoy writes outlier-detection events elsewhere (the bootstrap's
`cluster_manager.outlier_detection.event_log_path`); when that names the same file, its
`EJECT`/`UNEJECT` lines are read as transitions too (why: "outlier ejection (…)").

The log grows for as long as Envoy runs; we only ever read its last `TAIL_BYTES`
(`read_tail`), and `Tailer` reads at most `TAIL_BYTES` per poll, so no log size costs us more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xds_server.resources.clusters import service_of_cluster

TAIL_BYTES = 1024 * 1024
MAX_LINE_BYTES = 16 * 1024
FOLLOW_EVERY_S = 1.0
MAX_COUNTED_ENDPOINTS = 10_000  # (service, endpoint) pairs the counter keeps; more are not counted


@dataclass(frozen=True)
class Transition:
    at: str  # Envoy's timestamp, RFC 3339 UTC ("2026-12-06T06:13:54.298Z")
    cluster: str
    service: str
    endpoint: str  # host:port
    from_state: str  # unchecked, healthy, unhealthy, degraded
    to_state: str
    why: str


def _endpoint(host: Any) -> str | None:
    address = host.get("socket_address") if isinstance(host, dict) else None
    if not isinstance(address, dict) or "address" not in address:
        return None
    ip = str(address["address"])
    return (
        f"[{ip}]:{address.get('port_value', 0)}"
        if ":" in ip
        else f"{ip}:{address.get('port_value', 0)}"
    )


def _failure(event: dict[str, Any]) -> str:
    kind = str(event.get("failure_type", "ACTIVE"))
    words = {
        "ACTIVE": "failed health check",
        "PASSIVE": "failed passive check",
        "NETWORK": "health check could not connect",
        "NETWORK_TIMEOUT": "health check timed out",
    }.get(kind, f"health check failure {kind}")
    status = event.get("http_status_code")
    return f"{words} (HTTP {status})" if status else words


def _health_check_transition(event: dict[str, Any]) -> tuple[str, str, str] | None:
    if isinstance(added := event.get("add_healthy_event"), dict):
        first = bool(added.get("first_check"))
        return ("unchecked" if first else "unhealthy", "healthy", "passed health check")
    if isinstance(ejected := event.get("eject_unhealthy_event"), dict):
        return ("healthy", "unhealthy", _failure(ejected))
    if "degraded_healthy_host" in event:
        return ("healthy", "degraded", "health check reported degraded")
    if "no_longer_degraded_host" in event:
        return ("degraded", "healthy", "health check no longer degraded")
    return None


def _outlier_transition(event: dict[str, Any]) -> tuple[str, str, str] | None:
    action = event.get("action")
    kind = str(event.get("type", "")).removeprefix("CONSECUTIVE_").lower().replace("_", " ")
    if action == "EJECT" and event.get("enforced", True):
        return ("healthy", "ejected", f"outlier ejection ({kind})" if kind else "outlier ejection")
    if action == "UNEJECT":
        return ("ejected", "healthy", "outlier ejection ended")
    return None


def parse_line(line: bytes | str) -> Transition | None:
    """The transition one log line records, or None (not one, or not JSON)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("cluster_name"), str):
        return None
    cluster = event["cluster_name"]
    if "upstream_url" in event:  # an outlier-detection event
        endpoint: str | None = str(event["upstream_url"])
        found = _outlier_transition(event)
    else:
        endpoint = _endpoint(event.get("host"))
        found = _health_check_transition(event)
    if found is None or endpoint is None:
        return None
    return Transition(
        str(event.get("timestamp", "")),
        cluster,
        service_of_cluster(cluster),
        endpoint,
        *found,
    )


def _lines(chunk: bytes, whole_first: bool) -> list[bytes]:
    """Complete lines of `chunk` (the first only when `whole_first`; the last only when the
    chunk ends with a newline), each at most MAX_LINE_BYTES."""
    lines = chunk.split(b"\n")
    if not whole_first:
        lines = lines[1:]
    lines = lines[:-1]  # after the last newline: empty, or a line still being written
    return [x for x in lines if x and len(x) <= MAX_LINE_BYTES]


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> list[Transition]:
    """The transitions in the last `max_bytes` of the log at `path`, oldest first; raise
    OSError when it cannot be read."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        chunk = f.read(size - start)
    found = (parse_line(x) for x in _lines(chunk, whole_first=start == 0))
    return [t for t in found if t is not None]


def history(
    transitions: list[Transition], per_endpoint: int, service: str | None = None
) -> dict[tuple[str, str, str], list[Transition]]:
    """(service, cluster, endpoint) → its last `per_endpoint` transitions, oldest first."""
    out: dict[tuple[str, str, str], deque[Transition]] = {}
    for t in transitions:
        if service is None or t.service == service:
            out.setdefault((t.service, t.cluster, t.endpoint), deque(maxlen=per_endpoint)).append(t)
    return {key: list(found) for key, found in sorted(out.items())}


class Tailer:
    """Reads what Envoy appended since the last poll: at most `max_bytes` a poll, from the end
    of the file as it was when the tailer was made (what came before was counted by whoever
    ran then). A file that shrank or was replaced is read again from its start."""

    def __init__(self, path: Path, max_bytes: int = TAIL_BYTES) -> None:
        self._path = path
        self._max = max_bytes
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        try:
            st = path.stat()
            self._identity, self._offset = (st.st_dev, st.st_ino), st.st_size
        except OSError:
            pass

    def poll(self) -> list[Transition]:
        try:
            with self._path.open("rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != self._identity or st.st_size < self._offset:
                    self._identity, self._offset, self._partial = (st.st_dev, st.st_ino), 0, b""
                f.seek(self._offset)
                chunk = f.read(self._max)
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""  # no line is that long: drop it
        found = (parse_line(x) for x in data[:cut].split(b"\n") if x)
        return [t for t in found if t is not None]


async def follow(
    tailer: Tailer,
    seen: Callable[[Transition], None],
    stop: asyncio.Event,
    every_s: float = FOLLOW_EVERY_S,
) -> None:
    """Poll `tailer` every `every_s` until `stop` is set, handing each transition to `seen`."""
    while not stop.is_set():
        for transition in tailer.poll():
            seen(transition)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
