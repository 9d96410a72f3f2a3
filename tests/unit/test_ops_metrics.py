"""/metrics as Prometheus asks for it: OpenMetrics when the Accept header names it, the text
format otherwise; process metrics in every server's registry, no `_created` series."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from sidecar_shared import ops_http
from sidecar_shared.registry import server_registry

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
)


def page_of(accept: str) -> tuple[int, str, bytes]:
    registry = server_registry()
    Counter("demo_checks", "checks", registry=registry).inc()
    Histogram("demo_seconds", "time", registry=registry).observe(0.1)
    page = ops_http.metrics_page(registry)
    assert isinstance(page, ops_http.Negotiated)
    return page.for_accept(accept)


def test_prometheus_asking_for_openmetrics_gets_it() -> None:
    status, ctype, body = page_of(PROMETHEUS_ACCEPT)
    assert status == 200
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert b"demo_checks_total 1.0" in body


def test_a_client_without_accept_gets_the_text_format() -> None:
    _, ctype, body = page_of("")
    assert ctype.startswith("text/plain; version=0.0.4")
    assert b"# EOF" not in body and b"demo_checks_total 1.0" in body


def test_process_metrics_are_on_and_created_series_off() -> None:
    for accept in ("", PROMETHEUS_ACCEPT):
        _, _, body = page_of(accept)
        text = body.decode()
        assert "process_cpu_seconds_total" in text
        assert "process_resident_memory_bytes" in text
        assert "python_info" in text
        assert "_created" not in text


def test_the_accept_header_is_read_from_the_request_head() -> None:
    head = (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: application/openmetrics-text\r\n"
        b"accept: text/plain\r\n\r\n"
    )
    assert ops_http.header(head, "accept") == "application/openmetrics-text, text/plain"
    assert ops_http.header(head, "user-agent") == ""
