"""The side effects of the ADS server, one observer each: metrics, the log, tracing, and the
fleet (`fleet.Fleet`, which rolls the fleet back on a NACK). Streams and the service decide;
they tell an `XdsObserver` what happened and never count, log or trace themselves.

Events, in a stream's life: `opened`; `connected` once the first request names its node;
`sent` per response; `acked` or `nacked` per answer Envoy gives to the latest response of a
type (stale answers are not events); `unsupported` per request for a type we do not serve;
`push` per snapshot change; `refused` when the stream is ended for a reason the operator must
see; `closed`. Every event is told on the event loop's thread, in the order it happened, and
an observer must not raise.

A push is an interval, not an instant: its span ("xds push") must be current while the stream
decides what to send, and it records how many responses came out. So observers are told of a
push by wrapping it: `push(event, send)` returns what `send()` returns, as middleware does.
Start and end events instead would make the tracer keep open spans between two calls and
attach and detach contexts by hand; a context manager could not see the responses. The
`Push` carries the `contextvars` context of the moment the snapshot changed (inside the
reload's span when traced), so the server knows nothing of tracing.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from sidecar_shared.bounded import BoundedMap
from xds_server import typeurls
from xds_server.metrics import XdsMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

R = TypeVar("R")


@dataclass(frozen=True)
class StreamEvent:
    """A stream opened (no node yet), connected (its node named), or closed."""

    stream_id: int
    protocol: str  # "sotw" or "delta"
    node_id: str = ""
    peer: str = ""
    user_agent: str = ""  # the node's `user_agent_name` ("envoy" for Envoy), when connected
    authenticated: bool = False  # by a client certificate naming the node (`server`)


@dataclass(frozen=True)
class StreamRefused:
    """A stream ended because of `reason` (a label: metric, status); `count`: refusals of this
    node for this reason so far (1 the first time, again after the node had a working stream)."""

    node_id: str
    peer: str
    reason: str
    detail: str  # what the client is told
    count: int
    at: float


@dataclass(frozen=True)
class Unsupported:
    """A request for a type we do not serve (ignored)."""

    node_id: str
    type_url: str


@dataclass(frozen=True)
class Sent:
    """A response of `type_url` at `version` went out."""

    node_id: str
    type_url: str
    version: str


@dataclass(frozen=True)
class Ack:
    """Envoy accepted the last response of `type_url`: it has `version` now."""

    stream_id: int
    node_id: str
    type_url: str
    version: str
    seconds: float = 0.0  # from sending the response to this answer
    # Not an answer: the version a (re)connecting Envoy says it runs (a SotW request's
    # `version_info` before any response of ours), as a restarted server or another replica
    # hears it. It is what the proxy runs, but proves nothing of this stream.
    reported: bool = False


@dataclass(frozen=True)
class Nack:
    """Envoy rejected a response: what, from which snapshot, and Envoy's message."""

    node_id: str
    type_url: str
    version: str  # the type's version that was rejected
    snapshot_version: str
    error: str
    seconds: float = 0.0  # from sending the response to this answer
    stream_id: int = 0  # the stream that answered


@dataclass(frozen=True)
class Push:
    """A snapshot change reaches a stream."""

    node_id: str
    protocol: str
    snapshot_version: str | None  # the snapshot served now
    context: contextvars.Context  # where the change was made (the reload's span, if traced)


class XdsObserver(Protocol):
    def opened(self, event: StreamEvent) -> None: ...

    def connected(self, event: StreamEvent) -> None: ...

    def closed(self, event: StreamEvent) -> None: ...

    def refused(self, event: StreamRefused) -> None: ...

    def unsupported(self, event: Unsupported) -> None: ...

    def sent(self, event: Sent) -> None: ...

    def acked(self, event: Ack) -> None: ...

    def nacked(self, event: Nack) -> None: ...

    def push(self, event: Push, send: Callable[[], Sequence[R]]) -> Sequence[R]:
        """Return `send()`, observing it."""
        ...


class Observer:
    """An `XdsObserver` that ignores every event: observers inherit it and override what they
    watch."""

    def opened(self, event: StreamEvent) -> None:
        pass

    def connected(self, event: StreamEvent) -> None:
        pass

    def closed(self, event: StreamEvent) -> None:
        pass

    def refused(self, event: StreamRefused) -> None:
        pass

    def unsupported(self, event: Unsupported) -> None:
        pass

    def sent(self, event: Sent) -> None:
        pass

    def acked(self, event: Ack) -> None:
        pass

    def nacked(self, event: Nack) -> None:
        pass

    def push(self, event: Push, send: Callable[[], Sequence[R]]) -> Sequence[R]:
        return send()


class Observers:
    """Every observer told of every event, in the order given; a push runs inside all of their
    wrappers, the first outermost."""

    def __init__(self, *observers: XdsObserver) -> None:
        self._observers = observers

    def opened(self, event: StreamEvent) -> None:
        for o in self._observers:
            o.opened(event)

    def connected(self, event: StreamEvent) -> None:
        for o in self._observers:
            o.connected(event)

    def closed(self, event: StreamEvent) -> None:
        for o in self._observers:
            o.closed(event)

    def refused(self, event: StreamRefused) -> None:
        for o in self._observers:
            o.refused(event)

    def unsupported(self, event: Unsupported) -> None:
        for o in self._observers:
            o.unsupported(event)

    def sent(self, event: Sent) -> None:
        for o in self._observers:
            o.sent(event)

    def acked(self, event: Ack) -> None:
        for o in self._observers:
            o.acked(event)

    def nacked(self, event: Nack) -> None:
        for o in self._observers:
            o.nacked(event)

    def push(self, event: Push, send: Callable[[], Sequence[R]]) -> Sequence[R]:
        run = send
        for o in reversed(self._observers):
            run = functools.partial(o.push, event, run)
        return run()


class MetricsObserver(Observer):
    """`xds_connected_proxies`, responses, ACKs, NACKs, push-to-answer time, refused streams."""

    def __init__(self, metrics: XdsMetrics) -> None:
        self._metrics = metrics

    def opened(self, event: StreamEvent) -> None:
        self._metrics.connected_proxies.inc()

    def closed(self, event: StreamEvent) -> None:
        self._metrics.connected_proxies.dec()

    def refused(self, event: StreamRefused) -> None:
        self._metrics.refused_streams.labels(event.reason).inc()

    def sent(self, event: Sent) -> None:
        self._metrics.responses.labels(typeurls.SHORT_NAMES[event.type_url]).inc()

    def acked(self, event: Ack) -> None:
        if event.reported:
            return
        short = typeurls.SHORT_NAMES[event.type_url]
        self._metrics.push_ack_seconds.labels(short).observe(event.seconds)
        self._metrics.acks.labels(short).inc()

    def nacked(self, event: Nack) -> None:
        short = typeurls.SHORT_NAMES[event.type_url]
        self._metrics.push_ack_seconds.labels(short).observe(event.seconds)
        self._metrics.nacks.labels(short).inc()


# Refusals of one node for one reason are logged the first time, then at most this often.
REFUSAL_LOG_SECONDS = 60
# (node, reason) pairs whose last logged refusal is remembered.
REFUSALS_REMEMBERED = 1000
# What a log line keeps of a text a peer sent: a node id, peer, type URL; Envoy's message.
NAME_CHARS = 256
MESSAGE_CHARS = 1024


def clipped(text: str, limit: int = NAME_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class LogBudget:
    """How many lines carrying a peer's text may be written: `burst` at once, refilled at
    `per_second`. A line past the budget is dropped and counted; the next line written says
    how many were (`take`)."""

    def __init__(
        self,
        per_second: float = 10.0,
        burst: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()
        self._dropped = 0

    def take(self) -> int | None:
        """None when the line must be dropped; else the lines dropped since the last one."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            self._dropped += 1
            return None
        self._tokens -= 1
        dropped, self._dropped = self._dropped, 0
        return dropped


class LogObserver(Observer):
    """Connections, disconnections, NACKs with Envoy's message, unsupported types, and
    refused streams (the first time per node and reason, then once a minute).

    Every line carries text a peer chose (node ids, type URLs, messages): each such text is
    cut (`clipped`: `NAME_CHARS`, Envoy's message `MESSAGE_CHARS`), and the lines share one
    `LogBudget`; a line written after some were dropped says how many (`suppressed`)."""

    def __init__(self, log: logging.Logger, budget: LogBudget | None = None) -> None:
        self._log = log
        self._budget = budget or LogBudget()
        self._refusal_logged: BoundedMap[tuple[str, str], float] = BoundedMap(REFUSALS_REMEMBERED)

    def _write(self, level: int, message: str, fields: dict[str, object]) -> None:
        dropped = self._budget.take()
        if dropped is None:
            return
        if dropped:
            fields["suppressed"] = dropped
        self._log.log(level, message, extra={"fields": fields})

    def connected(self, event: StreamEvent) -> None:
        self._write(
            logging.INFO,
            "proxy connected",
            {
                "node_id": clipped(event.node_id),
                "peer": clipped(event.peer),
                "protocol": event.protocol,
                "user_agent": clipped(event.user_agent),
                "authenticated": event.authenticated,
            },
        )

    def closed(self, event: StreamEvent) -> None:
        if event.node_id:
            self._write(logging.INFO, "proxy disconnected", {"node_id": clipped(event.node_id)})

    def refused(self, event: StreamRefused) -> None:
        key = (event.node_id, event.reason)
        if event.count != 1 and event.at - self._refusal_logged.get(key, 0.0) < REFUSAL_LOG_SECONDS:
            return
        self._refusal_logged[key] = event.at
        self._write(
            logging.WARNING,
            "refused a proxy's stream",
            {
                "node_id": clipped(event.node_id),
                "peer": clipped(event.peer),
                "reason": event.reason,
                "detail": clipped(event.detail, MESSAGE_CHARS),
                "refused_so_far": event.count,
            },
        )

    def unsupported(self, event: Unsupported) -> None:
        self._write(
            logging.WARNING,
            "unsupported resource type requested",
            {"node_id": clipped(event.node_id), "type_url": clipped(event.type_url)},
        )

    def nacked(self, event: Nack) -> None:
        self._write(
            logging.WARNING,
            "envoy rejected a config",
            {
                "node_id": clipped(event.node_id),
                "type": typeurls.SHORT_NAMES[event.type_url],
                "version": event.version,
                "error": clipped(event.error, MESSAGE_CHARS),
            },
        )


class TracingObserver(Observer):
    """A span per push of a new snapshot to a proxy ("xds push"), the child of the reload
    that made the snapshot."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context  # noqa: PLC0415

        self._tracer = tracer
        self._current = context.get_current

    def push(self, event: Push, send: Callable[[], Sequence[R]]) -> Sequence[R]:
        parent = event.context.run(self._current)
        with self._tracer.start_as_current_span("xds push", context=parent) as span:
            responses = send()
            span.set_attribute("sidecar.node_id", event.node_id)
            span.set_attribute("sidecar.xds_protocol", event.protocol)
            span.set_attribute("sidecar.responses", len(responses))
            if event.snapshot_version is not None:
                span.set_attribute("sidecar.snapshot.version", event.snapshot_version)
        return responses
