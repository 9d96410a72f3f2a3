"""The xDS server's observers: every one told of every event, a push wrapped by each, the
refusal log's rate, and the push's span a child of the reload that made the snapshot."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xds_server.observers import (
    LogObserver,
    Nack,
    Observer,
    Observers,
    Push,
    StreamRefused,
    TracingObserver,
)

R = TypeVar("R")


class Recorder(Observer):
    def __init__(self, name: str, seen: list[str]) -> None:
        self._name = name
        self._seen = seen

    def nacked(self, event: Nack) -> None:
        self._seen.append(f"{self._name} nacked")

    def push(self, event: Push, send: Callable[[], Sequence[R]]) -> Sequence[R]:
        self._seen.append(f"{self._name} before")
        out = send()
        self._seen.append(f"{self._name} after")
        return out


def push(context: contextvars.Context | None = None) -> Push:
    return Push("edge-1", "sotw", "v1", context or contextvars.copy_context())


def test_every_observer_hears_every_event_in_order_and_a_push_runs_inside_all_of_them() -> None:
    seen: list[str] = []
    fan = Observers(Recorder("a", seen), Recorder("b", seen))
    fan.nacked(Nack("edge-1", "t", "v", "s", "boom"))

    def send() -> list[str]:
        seen.append("send")
        return ["response"]

    assert fan.push(push(), send) == ["response"]
    assert seen == ["a nacked", "b nacked", "a before", "b before", "send", "b after", "a after"]


def test_refusals_are_logged_the_first_time_then_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = LogObserver(logging.getLogger("test.refusals"))

    def refused(count: int, at: float) -> None:
        observer.refused(StreamRefused("edge-1", "peer", "too_many_names", "no", count, at))

    with caplog.at_level(logging.WARNING, "test.refusals"):
        refused(1, 100.0)
        refused(2, 130.0)  # within the minute: counted elsewhere, not logged
        refused(3, 161.0)
        refused(1, 162.0)  # a new run of refusals (the node had a working stream meanwhile)
    logged = [r.fields["refused_so_far"] for r in caplog.records]  # type: ignore[attr-defined]
    assert logged == [1, 3, 1]


def test_a_push_is_a_span_under_the_reload_that_made_the_snapshot() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    observer = TracingObserver(tracer)
    with tracer.start_as_current_span("catalog reload") as reload:
        made_in = contextvars.copy_context()
    assert observer.push(push(made_in), lambda: ["cds", "eds"]) == ["cds", "eds"]
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "xds push"]
    assert span.parent is not None
    assert span.parent.span_id == reload.get_span_context().span_id
    assert dict(span.attributes or {}) == {
        "sidecar.node_id": "edge-1",
        "sidecar.xds_protocol": "sotw",
        "sidecar.responses": 2,
        "sidecar.snapshot.version": "v1",
    }
    provider.shutdown()
